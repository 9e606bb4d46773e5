"""Pure, jittable L-inf and L2 attacks shared by training and evaluation (losses, norms, pgd,
apgd, fab, square); norms.py holds the threat models' projection and norms.

Each attack module declares the attacks the evaluator runs (attacks/attack.py); registry.py
collects them by name, with their settings sub-configs and the suites.
"""
