"""The multi-task ranking model (issue 14): pure-torch modules, one file per part, and its daily stage.

``inputs`` (feature encoding of the spec -> the input vector x0, DIN inside), ``cross`` (DCN-v2),
``din`` (DIN attention), ``experts`` (MMoE / PLE), ``model`` (towers, the whole model, the logistic-regression
baseline), ``loss`` (masked multi-task loss), ``calibration`` (alpha correction, fusion), ``metrics`` (AUC,
GAUC, log loss, calibration, NDCG), ``data`` / ``checkpoint`` / ``train`` / ``evaluate`` / ``export`` (the stage).
None of it imports pyspark. See docs/ranking.md.
"""
