"""Pure, jittable L-inf and L2 attacks shared by training and evaluation (losses, norms, pgd,
apgd, fab, square); norms.py holds the threat models' projection and norms.

SUITES names the evaluator's attack suites and the attacks each runs, in order (see
latentadv/evaluate.py).
"""

SUITES = {
    'pgd': ('pgd',),
    'apgd-ce': ('apgd-ce',),
    'apgd-t': ('apgd-t',),
    'fab-t': ('fab-t',),
    'square': ('square',),
    'bpda': ('bpda',),
    'autoattack': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
}
