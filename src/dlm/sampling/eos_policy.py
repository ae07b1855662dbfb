"""EOS policies of the block samplers (``eos_policy`` of ``llada`` and ``fast``; the loop is
:meth:`dlm.sampling.base.Sampler.run`):

* ``none``: every position of the canvas is decoded;
* ``stop_after_eos``: after each block, rows whose answer has ended are filled with EOS; once every
  row has ended decoding stops, so NFE counts only the passes really run;
* ``grow``: the same, and the model sees only the blocks decoded so far (``DenoiseState.visible``).
"""

from __future__ import annotations

import torch

from dlm.errors import DLMError

EOS_POLICIES = ("none", "stop_after_eos", "grow")


def finish_ended_rows(state, upto: int) -> None:
    """Fill the rest of every row whose answer has ended by canvas position ``upto`` with EOS.

    A row's answer has ended when its generated tokens before ``upto`` hold a stop token (EOS /
    end-of-turn) followed only by stop tokens or masks. Its masked positions then become EOS at
    once, so a row decodes the same alone and in a batch (later passes commit nothing in it);
    ``state.stats["forwards"][row]`` is the NFE it had taken when it ended.
    """
    facts = state.model.facts
    stops = torch.tensor(sorted(facts.stop_ids), device=state.x.device)
    P = state.prompt_length
    forwards = state.stats.setdefault("forwards", [0] * state.x.shape[0])
    for row in range(state.x.shape[0]):
        if state.ended[row]:
            continue
        forwards[row] = state.nfe
        gen = state.x[row, P:upto]  # (upto - P,)
        is_stop = torch.isin(gen, stops)
        other = (~is_stop & (gen != state.mask_id)).nonzero()
        last_other = int(other[-1]) if len(other) else -1  # the last token that is neither stop nor mask
        if bool(is_stop[last_other + 1:].any()):
            state.ended[row] = True
            tail = state.x[row, P + last_other + 1:]  # stops and masks only, to the end of the canvas
            tail[tail == state.mask_id] = facts.eos_ids[0]


def validate_eos_policy(policy: str, model) -> None:
    if policy not in EOS_POLICIES:
        raise DLMError(f"eos_policy must be one of {', '.join(EOS_POLICIES)}, got {policy!r}")
    if policy != "none" and not model.facts.eos_ids:
        raise DLMError(f"eos_policy {policy!r} needs an EOS id, and this model has none")
