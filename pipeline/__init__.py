"""clearmark's image pipeline: one upload in, one result, mask and status out. The service
(`clearmark.workers`) and evaluation (`evaluate_real`, `calibrate`) import it alike.

Read it top-down, in the order an image goes through it:
- `imaging`     decode safely (limits, orientation, modes), and encode like the input
                (`jpeg_exact`: a JPEG keeps the upload's coefficients outside the change);
- `process`     `process_image`: detect (the learned detector, the repetition detector, the
                text prior), mask, remove, the gate, the detectors again on the result;
- `gate`        the do-no-harm gate: is each change the lifting of an overlay?
- `verdict`     what each status promises, over every region any detector flagged, and
                the suspect prior that judges the learned detector's regions;
- `stages`      the stages `process_image` times, in order;
- `versions`    which pipeline made a result (code version and weights' hashes);
- `calibrate`, `evaluate_real`  fitting the prior and scoring the pipeline on real photos.

This package itself loads nothing: the API reads `versions` without pulling in the models.
"""
