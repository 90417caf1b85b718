"""The paper's Tables 1-4 and Figures 3-5, rebuilt from the records under results/ alone."""
