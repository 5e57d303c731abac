"""First-order reward ascent through the sampling chain, shared by ROCM, DRaFT and AlignProp: `chain` (the
reparameterized LCM chain with grad, its reward and Σ_k D_k), `update` (the loop and the `Objective` hook),
`learner` (FirstOrderLearner). The objective and the truncation K are the algorithm's."""
