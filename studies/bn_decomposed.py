"""BN decomposed at initialisation (Nachum, Bondaschi, Gastpar, Khina 2024; Daneshmand, Joudaki,
Bach 2021): deep random MLPs whose normalisation is split into recentering (rc), rescaling (rs)
and the non-linearity (nl), switched on and off. No training: each trial propagates one batch.

Three grids (their union is the study):
  outlier   RC + ReLU without RS: one point breaks away orthogonally, the rest cluster
            (norm ratio -> n - 1, outlier cosine -> 0);
  floor     RS-only linear networks (Daneshmand et al.'s row-norm rescaling): the orthogonality gap
            falls to a floor that shrinks like 1/sqrt(width); correlated inputs make it visible;
  combos    every RC/RS/NL combination, to see which parts produce which behaviour.
`rs` is "none", "std" (per-neuron batch std), "rownorm" (Daneshmand et al.) or "global".
"""
from sweeper import Study

OUTLIER = {"rc": [True], "rs": ["none"], "nl": ["relu", "leaky_relu"], "batch": [8, 16, 32, 64],
           "width": [128, 512, 2048], "depth": [300], "inputs": ["gaussian", "digits", "cifar10"],
           "seed": [0, 1, 2, 3, 4]}
FLOOR = {"rc": [False], "rs": ["rownorm"], "nl": ["identity"], "width": [16, 32, 64, 128, 256, 512, 1024, 2048],
         "depth": [300], "batch": [8, 16, 32], "input_corr": [0.9], "seed": [0, 1, 2, 3, 4],
         "cosine_layers": ["0,-1"]}
COMBOS = {"rc": [True, False], "rs": ["none", "std", "rownorm", "global"],
          "nl": ["relu", "identity", "tanh", "gelu"], "width": [512], "depth": [300], "batch": [16],
          "seed": [0, 1, 2]}
STABILITY = {"inputs": ["outlier"], "input_noise": [1e-8, 1e-4, 1e-2], "rc": [True],
             "rs": ["none", "std", "rownorm", "global"], "nl": ["relu"], "width": [256, 1024], "depth": [200],
             "seed": [0, 1, 2]}

study = Study(
    name="bn_decomposed",
    experiment="decomposed",
    axes=[OUTLIER, FLOOR, COMBOS, STABILITY],
    recipe={"dtype": "float64", "record_every": 1},
    figures=["decomposed_metrics", "decomposed_cosine", "orthogonality_floor"],
    resources={"cpu": 1, "gpu": 0},
    quick={
        "axes": [
            # the quick case: RC + ReLU without RS at n = 16, d = 512 to depth 300
            {"rc": [True], "rs": ["none"], "nl": ["relu"], "batch": [16], "width": [512], "depth": [300],
             "seed": [0, 1, 2]},
            {"rc": [False], "rs": ["rownorm"], "nl": ["identity"], "width": [32, 64, 128, 256, 512, 1024],
             "depth": [200], "batch": [16], "input_corr": [0.9], "seed": [0, 1], "cosine_layers": ["0,-1"]},
            {"rc": [True, False], "rs": ["none", "std"], "nl": ["relu", "identity"], "width": [256],
             "depth": [200], "batch": [16], "seed": [0, 1], "cosine_layers": ["0,10,50,-1"]},
        ],
    },
)
