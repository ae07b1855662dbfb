"""``dlm trace``: the denoising trajectory of one prompt, as an HTML page or an animated GIF.

One frame per sampler step (plus the all-masked start): the generated region of the canvas, each
position a cell - masked (grey), committed at this step (yellow), committed earlier (white),
special tokens such as EOS (blue). The HTML page lists every step (readable without JavaScript)
and has a slider to step through them; the GIF plays the frames at ``fps``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch

from dlm.errors import DLMError

MASK_GLYPH = "\u2591"  # light shade
SUFFIXES = (".html", ".gif")


def trajectory(model, prompt: str, sampler: str | None = None, seed: int = 0, chat: bool | None = None,
               **options) -> dict[str, Any]:
    """Generate with history; returns the frames as token strings and per-cell states.

    ``chat``: wrap the prompt in the chat template (None: when the tokenizer has one).
    """
    import dlm
    from dlm.eval.runner import hardware
    from dlm.provenance import software_versions

    ids = model.encode_prompt(prompt, chat=chat)
    out = dlm.generate(model, torch.tensor([ids]), sampler=sampler, seed=seed, output_history=True,
                       return_dict=True, **options)
    hist = out.history[:, 0, out.prompt_length:]  # (S + 1, G)
    mask_id = out.options.get("mask_id", model.facts.mask_id)
    special = {i for i in (*model.facts.eos_ids, model.facts.eot_id, model.facts.pad_id) if i is not None}
    frames = []
    for s in range(hist.shape[0]):
        cells = []
        for pos, tok in enumerate(hist[s].tolist()):
            if tok == mask_id:
                cells.append({"text": MASK_GLYPH, "state": "mask"})
                continue
            new = s > 0 and int(hist[s - 1, pos]) != tok
            text = model.decode([tok], skip_special_tokens=False) if model.tokenizer is not None else str(tok)
            state = "new" if new else ("special" if tok in special else "kept")
            cells.append({"text": text.replace("\n", "\u23ce") or " ", "state": state, "id": tok})
        frames.append(cells)
    final = out.sequences[0, out.prompt_length:].tolist()
    from dlm.sampling.batching import answer_ids

    answer = model.decode(answer_ids(model, final)) if model.tokenizer is not None else None
    return {"prompt": prompt, "chat": chat, "sampler": out.sampler, "options": out.options, "nfe": out.nfe,
            "seed": seed, "model": str(model.path), "versions": software_versions(), "hardware": hardware(model),
            "frames": frames, "answer": answer}


def settings_line(traj: dict[str, Any]) -> str:
    """Model, sampler, options, seed, versions and hardware of a trace, in one line."""
    hw = traj["hardware"]
    chat = {None: "auto", True: "on", False: "off"}[traj["chat"]]
    return (f"{traj['model']} - sampler {traj['sampler']}, NFE {traj['nfe']}, seed {traj['seed']}, chat {chat}, "
            f"options {json.dumps(traj['options'])}; "
            + ", ".join(f"{k} {v}" for k, v in traj["versions"].items())
            + f"; {hw.get('gpu') or hw.get('cpu')} ({hw['device']}, {hw['dtype']})")


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
.row{display:flex;flex-wrap:wrap;gap:2px;margin:4px 0 10px}
.c{font-family:ui-monospace,monospace;font-size:13px;padding:2px 4px;border:1px solid #ccc;border-radius:3px;white-space:pre}
.mask{background:#ddd;color:#999}.new{background:#ffe066;border-color:#d4a800}.kept{background:#fff}
.special{background:#dbeafe;color:#1e40af}h3{margin:0.6em 0 0;font-size:14px;color:#555}
#one{border:2px solid #888;padding:8px;border-radius:6px}"""

JS = """const frames = FRAMES;
function show(i){const d=document.getElementById('one');d.innerHTML='<h3>step '+i+' / '+(frames.length-1)+'</h3>'
+'<div class=row>'+frames[i].map(c=>'<span class="c '+c.state+'">'+c.html+'</span>').join('')+'</div>';}
const s=document.getElementById('slider');s.oninput=()=>show(+s.value);show(+s.value);"""


def render_html(traj: dict[str, Any]) -> str:
    frames = traj["frames"]
    rows = []
    for i, cells in enumerate(frames):
        spans = "".join(f'<span class="c {c["state"]}">{html.escape(c["text"])}</span>' for c in cells)
        rows.append(f"<h3>step {i}</h3><div class=row>{spans}</div>")
    js_frames = json.dumps([[{"state": c["state"], "html": html.escape(c["text"])} for c in cells] for cells in frames])
    meta = html.escape(settings_line(traj))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>dlm trace</title><style>{CSS}</style></head>"
            f"<body><h1>Denoising trajectory</h1><p>{meta}</p><p><b>Prompt:</b> {html.escape(traj['prompt'])}</p>"
            f"<p><b>Answer:</b> {html.escape(traj['answer'] or '')}</p>"
            f'<input type=range id=slider min=0 max={len(frames) - 1} value={len(frames) - 1} style="width:100%">'
            f"<div id=one></div><h2>All steps</h2>{''.join(rows)}"
            f"<script>{JS.replace('FRAMES', js_frames)}</script></body></html>")


COLORS = {"mask": ("#dddddd", "#999999"), "new": ("#ffe066", "#000000"), "kept": ("#ffffff", "#000000"),
          "special": ("#dbeafe", "#1e40af")}


def render_gif(traj: dict[str, Any], path: Path, fps: float = 2.0, columns: int = 8) -> None:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14) if hasattr(ImageFont, "load_default") else None
    cell_w, cell_h, pad = 96, 24, 6
    n = len(traj["frames"][0])
    rows = (n + columns - 1) // columns
    width, height = columns * cell_w + 2 * pad, rows * cell_h + 2 * pad + 22
    images = []
    for step, cells in enumerate(traj["frames"]):
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        draw.text((pad, 4), f"step {step}/{len(traj['frames']) - 1}  {traj['sampler']}  NFE {traj['nfe']}",
                  fill="#333333", font=font)
        for i, c in enumerate(cells):
            x, y = pad + (i % columns) * cell_w, pad + 22 + (i // columns) * cell_h
            bg, fg = COLORS[c["state"]]
            draw.rectangle([x, y, x + cell_w - 3, y + cell_h - 3], fill=bg, outline="#bbbbbb")
            if c["state"] == "mask":  # an empty grey cell (the default font lacks the shade glyph)
                continue
            text = c["text"] if len(c["text"]) <= 11 else c["text"][:10] + "~"
            draw.text((x + 3, y + 3), text, fill=fg, font=font)
        images.append(img)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0,
                   comment=settings_line(traj).encode("utf-8"))  # the settings travel with the file


def trace(model, prompt: str, out: Path, sampler: str | None = None, seed: int = 0, fps: float = 2.0,
          chat: bool | None = None, overwrite: bool = False, **options) -> Path:
    """Render the trajectory of ``prompt`` to ``out`` (.html or .gif); an existing file only with ``overwrite``."""
    from dlm.outputs import check_output_file

    out = check_output_file(out, SUFFIXES, overwrite=overwrite)  # before the generation, not after
    if fps <= 0:
        raise DLMError(f"--fps must be > 0, got {fps}")
    traj = trajectory(model, prompt, sampler=sampler, seed=seed, chat=chat, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".html":
        out.write_text(render_html(traj), encoding="utf-8")
    else:
        render_gif(traj, out, fps=fps)
    return out
