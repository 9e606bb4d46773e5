"""Pure, jittable L-inf attacks shared by training and evaluation (modules: losses, pgd)."""
