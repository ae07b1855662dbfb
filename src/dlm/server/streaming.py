"""From a request's canvas to OpenAI text: the answer so far, stop handling, SSE chunks.

A diffusion sampler fills its canvas in any order; the text a client can be sent is the committed
prefix - the generated tokens up to the first masked position - cut at the first stop token and at
the first ``stop`` string. :class:`TextTracker` turns successive canvases into deltas in order
(semi-autoregressive blocks and ISD rounds stream as they commit; a one-block run mostly at its
end), holding back what could still become a stop string or an unfinished UTF-8 character.

The canvas extension (``dlm.canvas``) sends, per step, every generated position's token piece and
state: 0 masked, 1 committed at this step, 2 kept, 3 revised (a visible token replaced by another).
"""

from __future__ import annotations

import json
import time

MASKED, COMMITTED, KEPT, REVISED = 0, 1, 2, 3


class TextTracker:
    def __init__(self, model, mask_id: int, stops: list[str], final_only: bool = False):
        self.model, self.mask_id, self.stops = model, mask_id, stops
        # a revision sampler (remdm, edit, wino, d3im) may change text it has shown: stream it once final
        self.final_only = final_only
        self.stop_ids = set(model.facts.stop_ids)
        self.sent = ""
        self.hold = max((len(s) for s in stops), default=1)  # characters held back while streaming
        self.stopped = False  # a stop string was seen

    def text_of(self, ids: list[int]) -> tuple[str, bool]:
        """Decoded text of answer ids, cut at the first stop string; whether one was cut."""
        text = self.model.decode(ids) if self.model.tokenizer is not None else " ".join(map(str, ids))
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        return (text[:cut], True) if cut >= 0 else (text, False)

    def _prefix(self, canvas: list[int]) -> list[int]:
        out = []
        for t in canvas:
            if t == self.mask_id or t in self.stop_ids:
                break
            out.append(t)
        return out

    def update(self, canvas: list[int]) -> str:
        """The new text a step's canvas commits (may be empty)."""
        if self.stopped or self.final_only:
            return ""
        text, cut = self.text_of(self._prefix(canvas))
        if cut:
            self.stopped = True
            ready = text
        else:
            ready = text[:max(len(text) - self.hold, 0)].rstrip("\ufffd")
        return self._advance(ready)

    def final(self, answer: list[int]) -> tuple[str, bool]:
        """The rest of the text once the request is done, and whether a stop string ended it."""
        text, cut = self.text_of(answer)
        return self._advance(text), cut

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent):  # the tokenizer re-spaced a longer decode: send what is new
            common = 0
            while common < min(len(text), len(self.sent)) and text[common] == self.sent[common]:
                common += 1
            text = self.sent + text[common:]
        delta = text[len(self.sent):]
        self.sent = text
        return delta


class CanvasView:
    """Per-step canvas records for the ``dlm.canvas`` stream."""

    def __init__(self, model, mask_id: int):
        self.model, self.mask_id = model, mask_id
        self.previous: list[int] | None = None
        self.pieces: dict[int, str] = {}

    def piece(self, t: int) -> str:
        if t not in self.pieces:
            self.pieces[t] = (self.model.decode([t], skip_special_tokens=False) if self.model.tokenizer is not None
                              else str(t))
        return self.pieces[t]

    def record(self, step: int, nfe: int, canvas: list[int]) -> dict:
        prev = self.previous or [self.mask_id] * len(canvas)
        states = [MASKED if t == self.mask_id else COMMITTED if p == self.mask_id else KEPT if p == t else REVISED
                  for t, p in zip(canvas, prev)]
        self.previous = canvas
        return {"step": step, "nfe": nfe, "tokens": canvas,
                "pieces": [None if t == self.mask_id else self.piece(t) for t in canvas], "states": states}


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def chunk(kind: str, rid: str, model: str, text: str | None = None, finish: str | None = None,
          role: bool = False, extra: dict | None = None) -> dict:
    """One streamed chunk of a completion (``kind`` "completion") or chat completion ("chat")."""
    base = {"id": rid, "created": int(time.time()), "model": model}
    if text is None and finish is None and not role:
        choices = []
    elif kind == "chat":
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    else:
        choices = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
    out = {**base, "object": "chat.completion.chunk" if kind == "chat" else "text_completion", "choices": choices}
    return {**out, **(extra or {})}
