"""`sweeper bench`: the performance facts of project issue 9, measured side by side in one run.

Each `measure_*` function returns a plain dict and can run on its own (the tests call them at tiny
sizes; benchmarks/run_bench.py runs them under the machine's heavy-run lock). `run_bench` runs
them all and adds the headline keys (goals in GOALS):

  trial_overhead_s            Ray per-trial overhead through `run_study` (tiny serial trials):
                              (wall - sum of in-trial time) / trials, split into the sweep's one-off
                              start (`sweep_fixed_start_s`) and a marginal part per trial; Tune's
                              default (reuse_actors=False) beside it
  sweep_efficiency            sum(in-trial seconds x CPUs) / (wall x cores) of a short CIFAR sweep
  step_speedup_vs_reference   our BN-only step (channels_last, frozen convs) vs a plain PyTorch loop;
                              bf16 autocast and the frozen-conv weight-gradient skip beside it
  sgemm_fraction              our step's FLOP rate (FlopCounterMode) / a large fp32 matmul's rate
  data_fraction               share of an epoch spent outside model steps
  figures_seconds_1000_trials `sweeper figures` on a generated store of 1,000 trials and their 8.2M
                              `bn` rows, in a fresh interpreter (peak RSS reported), and the bare
                              read of that `bn` table

Nothing here asserts a speed: the goals are shown beside the numbers (BENCHMARKS.md keeps them).
Every number is a wall-clock measurement on a machine that may be shared: the load average is
recorded with the results; take `flock /tmp/sweeper-heavy.lock` around a run you report.

One module per measurement:
  sweeps.py      Ray per-trial overhead and sweep efficiency, through sweeper.orchestration's run_study
  step.py        the training step (`sweeper.experiments.train.loop.train_step`) against a plain loop
  flops.py       FLOP counting, the step's time per op class, a large matmul's rate
  data_share.py  the data pipeline's share of an epoch
  figures.py     `sweeper figures` on a generated 1,000-trial store
  common.py      what they share: the machine's description, torch threads, interleaved timing
  run.py         all of them in one run (`run_bench`), the goals and the table; cli.py: `sweeper bench`
"""
