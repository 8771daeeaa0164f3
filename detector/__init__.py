"""ctnode's model side: CT series in, 3D findings out. Never imports ``node``."""
