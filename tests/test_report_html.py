"""The HTML report's generative-scan tables mark exactly the candidates that reached the threshold."""

from auditor.report.html import _generative_tables, _metrics_table


def test_generative_tables_flag_only_candidates_over_the_threshold():
    result = {"config": {"min_generative_asr": 0.8}, "model": {"class_names": None}}
    scan = {
        "flagged_classes": [3],  # flagged by its warp; its patches reached only 78%
        "generative": [{"target": 3, "patch_size": 8, "top": 1, "left": 0, "sample_asr_mean": 0.78,
                        "sample_asr_min": 0.6, "sample_asr_max": 0.85, "diversity": 0.1}],
        "warp": {"strength": 1.5, "steps": 80, "asr": [0.1, 0.0, 0.05, 0.87, 0.2, 0, 0, 0, 0, 0], "seconds": 2.0},
    }
    html = _generative_tables(result, scan)
    patch_table, warp_table = html.split("Warp search")
    assert "FLAGGED" not in patch_table and "78.00%" in patch_table
    assert warp_table.count("FLAGGED") == 1 and "87.00%" in warp_table and "at most 1.5 px" in warp_table
    assert _generative_tables(result, {"flagged_classes": []}) == ""  # a Neural Cleanse result has neither


def test_blend_table_flags_only_classes_under_the_ratio():
    result = {"config": {"min_generative_asr": 0.8, "max_blend_ratio": 0.4}, "model": {"class_names": None}}
    ratio = [1.0, 0.9, 0.45, 1.1, 0.17, None, 0.7, None, 0.8, 1.2]
    alpha = [None if r is None else round(0.3 * r, 4) for r in ratio]
    scan = {"flagged_classes": [4], "blend": {"ladder": [0.02, 0.35], "min_asr": 0.8, "steps_per_rung": 15, "alpha": alpha,
                                              "ratio": ratio, "asr_curves": [[0.1]] * 10, "seconds": 3.0}}
    html = _generative_tables(result, scan)
    assert html.count("FLAGGED") == 1 and "Blend search" in html
    rows = html.split("<tr")[2:]  # header row first; then the three lowest ratios, lowest first
    assert len(rows) == 3 and "FLAGGED" in rows[0] and "0.17" in rows[0] and "0.45" in rows[1] and "FLAGGED" not in rows[1]


def test_scan_section_says_who_flags():
    # Neural Cleanse flags by its anomaly index; under the generative scan the same index ranks, and
    # flags alone only above the (higher) NC-alone threshold
    from auditor.report.html import _scan_section

    result = {"config": {"min_generative_asr": 0.8, "anomaly_threshold": 2.5, "max_mask_ratio": 0.5,
                         "nc_alone_threshold": 6.0}, "model": {"class_names": None}}
    nc = {"method": "neural-cleanse", "flagged_classes": [], "norms": [40.0] * 10, "anomaly_index": [0.0] * 10,
          "recovered_asr": None, "seconds": 1.0, "fit_samples": 100}
    generative = dict(nc, method="generative", generative=[
        {"target": 8, "patch_size": 8, "top": 1, "left": 0, "sample_asr_mean": 0.5, "sample_asr_min": 0.4,
         "sample_asr_max": 0.6, "diversity": 0.1}])
    assert "flagged above 2.5" in _scan_section(dict(result, scan=nc))
    text = _scan_section(dict(result, scan=generative))
    assert "flagged above" not in text and "ranks the classes, and flags one by itself only above 6" in text


def test_a_scheduled_scan_shows_the_classes_searched_in_full():
    from auditor.report.html import _scan_section

    k = 100
    result = {"config": {"min_generative_asr": 0.8, "anomaly_threshold": 2.5, "max_mask_ratio": 0.5, "nc_alone_threshold": 6.0},
              "model": {"class_names": None}}
    full = [3, 7, 40, 41, 99]
    index = [(4.0 if c == 7 else 0.5) if c in full else None for c in range(k)]
    after_index = [0.2 if c in full and c != 3 else None for c in range(k)]  # the repaired model's scan scheduled other classes
    scan = {"method": "generative", "flagged_classes": [7], "suspected_classes": [40], "norms": [40.0] * k, "anomaly_index": index,
            "after": {"norms": [40.0] * k, "anomaly_index": after_index},
            "recovered_asr": [0.5 if c in full else None for c in range(k)], "seconds": 1.0, "fit_samples": 100,
            "warp": {"strength": 2.0, "steps": 80, "asr": [0.9 if c == 7 else 0.1 if c in full else None for c in range(k)], "seconds": 1.0},
            "class_schedule": {"classes": k, "full_search": full, "shortlist": [7, 3], "logit_shortlist": [40], "reference": [41, 99],
                               "screen_steps": 30}}
    text = _scan_section(dict(result, scan=scan))
    table = text.split("Mask L1")[1].split("</table>")[0]
    assert table.count("<tr") == len(full)  # the classes searched in full
    assert table.count("not searched in full") == 1 and "None" not in table
    assert "Class scheduling: this model has 100 classes" in text and "never flags one by itself" in text
    warp = text.split("Warp search")[1]
    assert warp.count("FLAGGED") == 1 and "None" not in warp


def test_metrics_table_explains_the_asr_split_only_when_it_shows_one():
    no_asr = _metrics_table({"metrics": {"before": {"c_acc": 0.9, "eval_samples": 10, "asr": None}}})
    assert "WITHOUT the trigger" not in no_asr and "ASR counts" not in no_asr
    before = {"c_acc": 0.9, "eval_samples": 10, "asr": 0.5, "asr_trigger": "known", "target": 1,
              "asr_no_trigger": 0.01, "asr_trigger_flips": 0.49}
    with_asr = _metrics_table({"metrics": {"before": before}})
    assert "WITHOUT the trigger" in with_asr and "ASR counts" in with_asr and "49.00%" in with_asr


def _check(name, stage, outcome, message="", **properties):
    return {"id": f"{name}[{stage}]", "name": name, "stage": stage, "outcome": outcome, "message": message,
            "seconds": 0.0, "backdoor": False, "properties": properties}


def test_verdict_counts_skipped_checks_and_the_checks_table_shows_each_condition():
    from auditor.report.html import _checks_table, _verdict

    checks = [_check("check_clean_accuracy", "before", "passed", condition="clean accuracy >= 80%", measured=0.9,
                     threshold=0.8, margin=0.1, unit="share"),
              _check("check_known_trigger_asr", "before", "skipped", "no --trigger given"),
              _check("check_trigger_scan", "before", "passed", condition="no class flagged", measured=0, threshold=0, margin=0)]
    result = {"verdict": "pass", "exit_code": 0, "gate": "before", "errors": [], "checks": checks,
              "model": {"path": "m.pt", "sha256": "ab" * 32, "class_names": None}, "config": {},
              "provenance": {"timestamp": "2026-12-02T05:00:00Z"}}
    verdict = _verdict(result)
    assert "every check passed" not in verdict and "(1 not applicable, skipped)" in verdict
    assert "as delivered: 2 passed, 0 failed, 1 skipped, 0 errors" in verdict and "ab" * 32 in verdict
    table = _checks_table(result)
    assert "clean accuracy &gt;= 80%" in table and "90.00%" in table and "80.00%" in table and "10.00%" in table
    assert "no --trigger given" in table  # a skipped check says why where its condition would be
    failed = _check("check_clean_accuracy", "before", "failed", "too low", condition="c", measured=0.7, threshold=0.8,
                    margin=-0.1, unit="share")
    assert 'class="neg"' in _checks_table({**result, "checks": [failed]})


def test_a_second_flagged_class_is_named_as_possibly_natural():
    from auditor.report.html import _natural_notes

    result = {"model": {"class_names": ["a", "b", "c"]}, "scan": {"flagged_classes": [1, 2]},
              "metrics": {"before": {"target": 1, "asr_trigger": "known"}}, "defense": {"applied": True}}
    notes = _natural_notes(result)
    assert len(notes) == 1 and "2 (c)" in notes[0] and "1 (b)" in notes[0] and "unlearned" in notes[0]
    assert _natural_notes({**result, "scan": {"flagged_classes": [1]}}) == []
    # no known trigger: nothing says which flag is the real one
    assert _natural_notes({**result, "metrics": {"before": {"target": 1, "asr_trigger": "recovered"}}}) == []


def test_provenance_block_lists_every_file_with_its_hash():
    from auditor.report.html import _provenance

    prov = {"tool": {"name": "auditor", "version": "0.1.0"}, "timestamp": "2026-12-02T05:00:00Z",
            "finished": "2026-12-02T05:01:00Z", "command_line": ["auditor", "scan", "m.pt"], "user": "u", "host": "h",
            "ci": {"system": "github-actions", "run_id": "42", "url": "https://x/runs/42"}, "seed": 0, "device": "cpu",
            "versions": {"torch": "2"},
            "inputs": [{"role": "model", "path": "m.pt", "kind": "file", "sha256": "ab" * 32, "size_bytes": 10},
                       {"role": "data", "path": "d/", "kind": "folder", "sha256": "cd" * 32, "size_bytes": 5, "files": 3}],
            "outputs": [{"role": "repaired_model", "path": "o/m.repaired.pt", "kind": "file", "sha256": "ef" * 32, "size_bytes": 9}]}
    html = _provenance({"provenance": prov})
    assert all(h * 32 in html for h in ("ab", "cd", "ef")) and "folder of 3 files" in html
    assert "run_id 42" in html and "auditor scan m.pt" in html and "2026-12-02T05:00:00Z" in html
    assert _provenance({}) == ""
