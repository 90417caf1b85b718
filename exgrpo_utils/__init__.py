"""Reproducibility kit for "Probing to Refine" (Explanatory Inversion + ExGRPO), stage by stage:

    infra/        the kit's plumbing: atomic files and logs, paths, the run layout (RunLayout), fingerprints,
                  documented settings fields
    data/         the Example type, the 12 datasets and the synthetic arith family, the scorer, prompts
    models/       model registry and loading, generation backends, chat backends, the completion cache
    teach/        stage 1: EI rules, LLM and program teachers, typed EI records, the EI pipeline with Eq. 1
                  and Eq. 2; the baselines' teacher data
    train/        stages 2-3: the one train-and-save path (loop.py), SFT (Eq. 3), RL data, rollouts, rewards
                  (Eq. 4-6), the ExGRPO trainer (Eq. 7-8), OPD
    evaluate/     evaluation on the 12 datasets and intervals
    experiments/  every table row as a method; the baselines' training rows; train-or-reuse, evaluate, record
    report/       the paper's tables and figures from results/ alone
    config.py     the flat parameter namespace and presets; runner.py (papermill), train_cli.py (accelerate)
"""
