"""A LoRA adapter active only at chosen token positions (R-ISD, the lossless I-DLM variant).

R-ISD trains a LoRA adapter that acts only at the mask slots that draft tokens; every other
position - and so the keys and values of every committed token - runs the base model exactly, so
the tokens ``isd`` commits follow the base model's own distribution. :class:`LoraGate` multiplies
each peft LoRA update (the ``lora_B`` output, (B, T, out)) by a gate (B, T, 1): 1 where the adapter
acts, 0 elsewhere (x + 0 == x: bit-exact base outputs). Training sets the gate from the doubled
input's layout (:mod:`dlm.train.idlm`); a loaded R-ISD adapter gates by the input itself
(:func:`gate_by_mask_token`: the adapter acts exactly where the input token is the mask), which is
what every caller - ``isd``, ``ar``, likelihood - needs without knowing about the gate.
"""

from __future__ import annotations

import torch

from dlm.errors import DLMError


class LoraGate:
    """Multiplies every peft LoRA update by ``value`` (B, T, 1); None = no gate. ``value`` stays
    set after a forward (gradient checkpointing recomputes in backward)."""

    def __init__(self):
        self.value: torch.Tensor | None = None
        self.handles: list = []

    def attach(self, net) -> LoraGate:
        if self.handles:
            return self
        from peft.tuners.lora import LoraLayer

        for module in net.modules():
            if isinstance(module, LoraLayer):
                self.handles += [b.register_forward_hook(self._hook) for b in module.lora_B.values()]
        if not self.handles:
            raise DLMError("a mask-slot-only LoRA gate needs a LoRA adapter, and this model has no LoRA layers")
        return self

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.value = [], None

    def _hook(self, module, inputs, output):
        gate = self.value
        if gate is None:
            return None
        if output.shape[:-1] != gate.shape[:-1]:
            raise DLMError(f"the LoRA mask-slot gate was set for {tuple(gate.shape[:-1])} tokens, the forward has "
                           f"{tuple(output.shape[:-1])}; set LoraGate.value for this input (None: no gate)")
        return output * gate.to(output.dtype)


def gate_by_mask_token(net, mask_id: int) -> LoraGate:
    """Gate the LoRA layers of the peft model ``net`` by its input: before every forward the gate
    is set to ``input_ids == mask_id`` (B, T, 1). A forward without ``input_ids`` (embeddings
    only) is refused: the gate could not be set."""
    gate = LoraGate().attach(net)

    def set_gate(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor):
            raise DLMError("this model's LoRA adapter acts only at mask tokens (R-ISD), so its forward needs "
                           "input_ids to place them")
        gate.value = (ids == mask_id).unsqueeze(-1)  # (B, T, 1)
        return None

    gate.handles.append(net.register_forward_pre_hook(set_gate, with_kwargs=True))
    net.dlm_gate_mask_id = mask_id  # samplers check their draft token against it
    return gate
