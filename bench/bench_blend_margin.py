"""Blend-search ratios beside MM-BD's per-class margins, per model and seed: the numbers behind the
generative scan's rule that a blend ratio above the flag but at most 0.6 fails a model when MM-BD names
the same class with p < 0.001 (docs/benchmarks.md, "Blend search corroborated by maximum margin").
Both searches run as the generative scan runs them, except that MM-BD runs whatever the ratios are.
One JSON line per run; run it once per model and seed:

    .venv/bin/python bench/bench_blend_margin.py fixtures/zoo/clean_s2.pt fashion-mnist 0
    .venv/bin/python fixtures/build_varied.py --only rn18c_face_t3 rn18c_clean     # 15-25 min each
    .venv/bin/python bench/bench_blend_margin.py fixtures/zoo/varied/rn18c_face_t3.pt fixtures/zoo/varied/rn18c_data.npz 0
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_scans import open_session  # noqa: E402
from auditor.scans.generative import GenerativeParams, run_blend_search, run_maximum_margins  # noqa: E402
from auditor.scans.max_margin import max_of_null_p_value  # noqa: E402
from auditor.scans.neural_cleanse import _freeze, _restore  # noqa: E402


def main() -> None:
    model, data, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    session = open_session(model, "generative", 10, seed, data)
    handle, split = session.handle, session.split
    params = GenerativeParams(seed=seed)
    flags = _freeze(handle.module)
    try:
        start = time.time()
        blend = run_blend_search(handle, split.fit.x, split.eval.x, split.eval.y, params)
        blend_s = time.time() - start
        margins = run_maximum_margins(handle, params)
        margin_s = time.time() - start - blend_s
    finally:
        _restore(handle.module, flags)
    top, p = max_of_null_p_value(margins)
    print(json.dumps({"model": Path(model).stem, "seed": seed, "target": (handle.info.metadata.get("trigger") or {}).get("target"),
                      "ratio": blend.summary()["ratio"], "mm_top": top, "mm_p": p, "margins": [round(m, 1) for m in margins],
                      "blend_s": round(blend_s), "mm_s": round(margin_s)}), flush=True)


if __name__ == "__main__":
    main()
