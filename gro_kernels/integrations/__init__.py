"""Optional drop-ins for trainers (transformers, TRL, verl); importing gro_kernels never imports these."""
