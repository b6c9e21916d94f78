"""PPO with continuous actions, as in FedAdapt (plain torch).

Actor and critic are MLPs ``state -> 64 -> 32 -> out`` with tanh hidden layers; the actor's sigmoid output is the
mean of a Gaussian with a fixed exploration std (0.5, decayed x0.9 every 20 updates). The agent updates every
50 steps with 50 epochs of the clipped objective (clip 0.2, entropy bonus 0.01) on normalised Monte-Carlo
returns (gamma 0.9), one Adam optimiser (lr 3e-4) over both networks.

One deviation from FedAdapt: it updates every 10 steps. With 10-round episodes that normalises the returns
*within one episode*, so the advantage mostly says how early in the episode a step was (discounted returns shrink
towards the end), not how good its action was; the deterministic policy then stalls well below "always offload"
on the testbed. Updating every 50 steps (5 episodes) normalises across episodes and learns the testbed's optimum
in about 200 episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

__all__ = ["ActorCritic", "PPOAgent", "PPOConfig"]


@dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters (FedAdapt's, except ``update_every``: 50 instead of 10 steps, see the module docstring)."""

    lr: float = 3e-4
    gamma: float = 0.9
    clip: float = 0.2
    epochs: int = 50
    update_every: int = 50
    entropy: float = 0.01
    action_std: float = 0.5
    std_decay: float = 0.9
    std_decay_every: int = 20
    min_std: float = 0.05

    def to_dict(self) -> dict[str, float]:
        """JSON-serialisable form."""
        return asdict(self)


def _mlp(inp: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, out))


class ActorCritic(nn.Module):
    """The actor (sigmoid mean action per group) and the critic (state value)."""

    def __init__(self, state_dim: int, action_dim: int) -> None:
        super().__init__()
        self.state_dim, self.action_dim = state_dim, action_dim
        self.actor = nn.Sequential(_mlp(state_dim, action_dim), nn.Sigmoid())
        self.critic = _mlp(state_dim, 1)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean action and value of ``state`` (batch x state_dim)."""
        return self.actor(state), self.critic(state).squeeze(-1)


@dataclass
class _Buffer:
    states: list[torch.Tensor] = field(default_factory=list)
    actions: list[torch.Tensor] = field(default_factory=list)
    logprobs: list[torch.Tensor] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    dones: list[bool] = field(default_factory=list)

    def clear(self) -> None:
        for v in (self.states, self.actions, self.logprobs, self.rewards, self.dones):
            v.clear()


class PPOAgent:
    """A PPO agent over ``state_dim`` inputs and ``action_dim`` actions in ``[0, 1]``.

    Parameters
    ----------
    state_dim, action_dim : int
        Sizes of the state and action vectors (``2 G`` and ``G`` for ``G`` groups).
    config : PPOConfig, optional
        Hyper-parameters.
    seed : int
        Seed of the network initialisation and of the exploration noise.
    """

    def __init__(self, state_dim: int, action_dim: int, config: PPOConfig | None = None, seed: int = 0) -> None:
        self.config = config or PPOConfig()
        self.gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = ActorCritic(state_dim, action_dim)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)
        self.std = self.config.action_std
        self.updates = 0
        self.buffer = _Buffer()
        self.selection: list[tuple[int, float]] = []

    def policy_fn(self) -> Callable[[list[float]], list[float]]:
        """The deterministic policy (mean action, no exploration, nothing recorded): what is deployed."""
        return lambda state: self.act(state, explore=False).tolist()

    def act(self, state: torch.Tensor | list[float], explore: bool = True) -> torch.Tensor:
        """Pick an action for ``state``; with ``explore`` sample it and remember the step for the next update.

        Returns the action clipped to ``[0, 1]`` (the sampled, unclipped action is what the update uses).
        """
        s = torch.as_tensor(state, dtype=torch.float32)
        with torch.no_grad():
            mean, _ = self.net(s.unsqueeze(0))
        mean = mean.squeeze(0)
        if not explore:
            return mean.clamp(0.0, 1.0)
        noise = torch.randn(mean.shape, generator=self.gen) * self.std
        action = mean + noise
        dist = torch.distributions.Normal(mean, self.std)
        self.buffer.states.append(s)
        self.buffer.actions.append(action)
        self.buffer.logprobs.append(dist.log_prob(action).sum())
        return action.clamp(0.0, 1.0)

    def record(self, reward: float, done: bool) -> bool:
        """Store the reward of the last :meth:`act`; update every ``update_every`` steps. Returns whether it did."""
        self.buffer.rewards.append(float(reward))
        self.buffer.dones.append(bool(done))
        if len(self.buffer.rewards) >= self.config.update_every:
            self.update()
            return True
        return False

    def _returns(self) -> torch.Tensor:
        out, running = [], 0.0
        for r, done in zip(reversed(self.buffer.rewards), reversed(self.buffer.dones), strict=True):
            if done:
                running = 0.0
            running = r + self.config.gamma * running
            out.append(running)
        ret = torch.tensor(out[::-1], dtype=torch.float32)
        return (ret - ret.mean()) / (ret.std(unbiased=False) + 1e-5)

    def update(self) -> None:
        """One PPO update on the buffered steps, then clear the buffer and decay the exploration std."""
        if not self.buffer.rewards:
            return
        cfg = self.config
        returns = self._returns()
        states = torch.stack(self.buffer.states)
        actions = torch.stack(self.buffer.actions)
        old_logp = torch.stack(self.buffer.logprobs)
        for _ in range(cfg.epochs):
            mean, values = self.net(states)
            dist = torch.distributions.Normal(mean, self.std)
            logp = dist.log_prob(actions).sum(-1)
            entropy = dist.entropy().sum(-1)
            adv = returns - values.detach()
            ratio = torch.exp(logp - old_logp)
            surr = torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
            loss = -surr + 0.5 * (values - returns) ** 2 - cfg.entropy * entropy
            self.optimizer.zero_grad()
            loss.mean().backward()
            self.optimizer.step()
        self.buffer.clear()
        self.updates += 1
        if self.updates % cfg.std_decay_every == 0:
            self.std = max(cfg.min_std, self.std * cfg.std_decay)
