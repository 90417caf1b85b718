"""The data side: the Example type, the 12 datasets and the synthetic arith family, the answer scorer, prompts."""
