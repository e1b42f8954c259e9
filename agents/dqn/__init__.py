"""The paper's Double-DQN agent, one concept per module (Acme's layout):

- `config`: DQNConfig, every hyper-parameter named once;
- `networks`: the Q-network with task-specific gains and biases;
- `losses`: the Double-DQN targets and loss;
- `fisher`: the diagonal Fisher of a Q-network on a task (what EWC anchors);
- `learning`: the Learner (RMSProp, clipping, the merged EWC penalty, checkpoints);
- `actor`: the EnvRunner that plays games with a local copy of the network.

Nothing here knows Ray: `training/` wraps these classes in actors.
"""
