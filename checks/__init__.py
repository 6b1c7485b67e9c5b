"""Built-in audit checks. Each check_*.py file is a pytest module; add your own with --checks DIR.

Fixtures a check can take (provided by auditor.plugin.AuditPlugin):
  stage         "before" (the model as delivered) or "after" (the repaired model); taking it makes
                the check run in both stages
  model         auditor.model.ModelHandle for the stage (pixels in [0, 1] -> logits)
  model_file    the file of the stage's model (the input, or the repaired file written)
  clean_data    auditor.data.Split with .fit and .eval (ImageSet: .x, .y)
  scan          the trigger-recovery scan result for the stage (anomaly_index, norms, masks, ...)
  metrics       {"c_acc", "per_class_acc", "asr", "asr_no_trigger", "asr_trigger_flips", "asr_trigger", "target", "r_acc", ...}
  known_trigger auditor.triggers.Trigger from --trigger, or None
  audit_config  auditor.config.AuditConfig (thresholds: min_accuracy, max_asr, anomaly_threshold, ...)
  audit_session the whole auditor.session.AuditSession
Mark a check @pytest.mark.backdoor when its failure should trigger the defense.
"""
