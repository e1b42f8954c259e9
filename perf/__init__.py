"""Performance measurement helpers behind `python run.py bench` (see docs/performance.md).

`perf.measure`: micro-benchmarks (bare learner update, EWC overhead, replay, Fisher, env actors)
and the steady-state window of a training run. `perf.rllib_dqn`: RLlib's DQN configured like
our agent, for the side-by-side training throughput.
"""
