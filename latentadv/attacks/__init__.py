"""Pure, jittable L-inf attacks shared by training and evaluation (losses, pgd, apgd, square)."""
