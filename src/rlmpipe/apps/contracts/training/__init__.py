"""Training the clause finder (extra ``train``: scikit-learn): the data (:mod:`.data`), the
thresholds (:mod:`.thresholds`) and narrowing (:mod:`.narrowing`) chosen on out-of-fold scores, the
figures (:mod:`.metrics`) and the training run with its model card (:mod:`.train`)."""
