"""Stage 1, Explanatory Inversion (method.md section 2): rules, teachers, the pipeline with Eq. 1 and Eq. 2."""
