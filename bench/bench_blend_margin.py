"""Blend-search ratios beside MM-BD's per-class margins, per model and seed: the numbers behind the
generative scan's rule that a blend ratio above the flag but at most 0.6 fails a model when MM-BD names
the same class with p < 0.001 (docs/benchmarks.md, "Blend search corroborated by maximum margin").
One JSON line per run; run it once per model and seed:

    .venv/bin/python bench/bench_blend_margin.py fixtures/zoo/clean_s2.pt fashion-mnist 0
    .venv/bin/python fixtures/build_varied.py --only rn18c_face_t3 rn18c_clean     # 15-25 min each
    .venv/bin/python bench/bench_blend_margin.py fixtures/zoo/varied/rn18c_face_t3.pt fixtures/zoo/varied/rn18c_data.npz 0
"""
import sys, json, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from auditor.config import AuditConfig
from auditor.registry import SCANS
from auditor.session import AuditSession
from auditor.scans.blend import blend_search
from auditor.scans.generative import GenerativeParams
from auditor.scans.neural_cleanse import _freeze, _restore
import auditor.scans  # noqa
model, data, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = AuditSession(AuditConfig(model=Path(model), data=data, clean_samples=10, seed=seed), progress=lambda m: None)
s.prepare()
h, sp = s.handle, s.split
p = GenerativeParams(seed=seed)
t = time.time()
flags = _freeze(h.module)
b = blend_search(h, sp.fit.x, sp.eval.x, sp.eval.y, steps=p.blend_steps, batch_size=p.blend_batch_size, lr=p.blend_lr,
                 min_asr=p.blend_asr, eval_samples=p.blend_eval_samples, seed=p.seed)
_restore(h.module, flags)
tb = time.time() - t
r = SCANS.get("max-margin").factory(h, sp, {}, seed, None)
meta = h.info.metadata
print(json.dumps({"model": Path(model).stem, "seed": seed, "target": (meta.get("trigger") or {}).get("target"),
                  "ratio": b.summary()["ratio"], "mm_top": r.top, "mm_p": r.p_value,
                  "margins": [round(m, 1) for m in r.margins], "blend_s": round(tb), "mm_s": round(r.seconds)}), flush=True)
