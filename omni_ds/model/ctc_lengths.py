"""When CTC can align an answer's units to the decoder's output: the one rule that the model's
loss, the data validator and the training loop share.

The decoder's output for n response states is L = max(lambda * n, U) frames
(CTCSpeechGenerator.upsample stretches an output shorter than the U target units to U, as the
official code does). A CTC alignment of U units needs U frames plus a blank between every pair
of equal neighbours (R such pairs), so one exists iff L >= U + R. As L >= U always, only repeated
neighbours can make it impossible:

    infeasible  <=>  R > 0  and  lambda * n < U + R

and then F.ctc_loss is +inf (zero_infinity turns it into 0 with no gradient). km1000 units have
their repeats merged (R = 0, always feasible); units kept with repeats (extract_units --no-dedup,
a data set's own unit strings) are where this bites.

Plain operators only, so the functions work elementwise on numpy arrays and torch tensors alike.
"""
from __future__ import annotations

from omni_ds.constants import IGNORE_INDEX


def padded_repeats(units):
    """Per row of right-padded units [N, U] (padding IGNORE_INDEX): adjacent equal pairs."""
    return ((units[:, 1:] == units[:, :-1]) & (units[:, 1:] != IGNORE_INDEX)).sum(-1)


def ctc_infeasible(n_states, n_units, repeats, factor: int):
    """True where no CTC alignment exists (module doc)."""
    return (repeats > 0) & (factor * n_states < n_units + repeats)


def infeasible_reason(n_states: int, n_units: int, repeats: int, factor: int) -> str:
    """'40 states x 25 = 1000 frames < 1012 units + 30 repeats' (the stretch to U said when it applies)."""
    frames = factor * n_states
    stretched = f", stretched to {n_units}" if frames < n_units else ""
    return (f"{n_states} states x {factor} = {frames} frames{stretched} < {n_units} units + "
            f"{repeats} repeats")
