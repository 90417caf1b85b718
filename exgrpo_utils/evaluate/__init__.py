"""Evaluation (method.md section 5): one greedy pass, accuracy per dataset, Wilson, mean and seed intervals."""
