"""Every safety rule of docs/safety.md, as a pure function of plain values with a stable reason
code (snake_case). The rest of the service measures and acts; these decide.

    column.may_wobble          busy file, pause, hold: whether a wobble may start (schedule, once,
                               once --force), and again before each wobble step and the correction
    column.c1_changed          hands on the column: C1 not where the daemon left it
    column.aperture_moved      hands on the column: the aperture moved by a person
    column.same_c1             the C1 tolerance (read-backs, recovery, hands on the column)
    stack.judge_stack          the doubtful stack: beam absent, disc lost, wide frames saturated
    stack.camera_at_risk       camera protection: a frame saturated enough to stop the wobble
    trust.model_verdict        the model alone: failed, configured alone, no calibration
    trust.agreement            estimator agreement (and the classical estimator's own fit)
    envelope.decide            the motion envelope: window, excursion, max step, rate limit,
                               deadband, gain, hardware limits
    envelope.step_budget       the rate limit keeps room for the rollback of each correction
    envelope.check_aligned     the two-frame check's deadband
    verify.motor_fault         a motor that did not reach its target
    verify.is_worse            worse after a move: roll back
    verify.FailureCounter      failures in a row toward hold
    promotion.may_promote      a candidate model replaces the live one only on shadow evidence
    model_gate.model_gate      a model without an evaluation, or evaluated over the RMSE limit
"""
