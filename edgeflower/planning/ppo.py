"""PPO with a categorical action per group over the model's cuts (plain torch).

FedAdapt's agent outputs a continuous offloading level per group (a Gaussian around a sigmoid mean) that is then
mapped to the nearest split point. That agent learned one level for every state ("offload everything") and did not
react when a link dropped: a Gaussian mean moves slowly between the few cuts that matter, and the clipped samples
near 0 all map to the same ``k = 0``. Here the action of each group is one of the ``num_blocks + 1`` split points
itself (``k = num_blocks``: no offloading), drawn from a categorical distribution, so the policy can put its mass
on "offload everything" in one state and "no offloading" in another.

Actor and critic are MLPs ``state -> 64 -> 32 -> out`` with tanh hidden layers (FedAdapt's sizes); the actor's
output is ``num_groups x num_choices`` logits, the critic's one value per group. The agent updates every
``update_every`` steps with ``epochs`` epochs of the clipped objective (clip 0.2, entropy bonus) on normalised
Monte-Carlo returns minus the critic's value, one Adam optimiser over both networks. The deployed policy is the most
likely cut of each group (no sampling).

Credit per group: a group's cut changes only the times of that group's devices, so when the environment gives
the reward per group (:attr:`~edgeflower.planning.env.StepInfo.group_rewards`, summing to FedAdapt's reward) each
group's action is judged by its own return (a factorised policy with one advantage per factor). With one reward
per step (a scalar) every group shares it, as in FedAdapt.

Deviations from FedAdapt's hyper-parameters: returns are discounted with ``gamma = 0.5`` rather than 0.9 (an
action changes only the reward of its own round; the next state depends on it through the measured time, not the
devices' future, so later rounds' rewards are mostly noise for it); the update runs every 50 steps (5 episodes)
rather than 10, so returns are normalised across episodes, not within one; the learning rate is ``1e-3`` and the
entropy bonus ``0.05`` (rather than ``3e-4`` and ``0.01``). With FedAdapt's two, the policy put nearly all its mass on
"offload everything" (right in most states) before it had sampled "no offloading" often enough in the rarer
states after a bandwidth drop, and never reacted to a drop (2 of 3 seeds on the testbed's profile); with these,
3 of 3 seeds learned to move the dropped devices back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

__all__ = ["ActorCritic", "PPOAgent", "PPOConfig"]


@dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters (see the module docstring for those that differ from FedAdapt's)."""

    lr: float = 1e-3
    gamma: float = 0.5
    clip: float = 0.2
    epochs: int = 50
    update_every: int = 50
    entropy: float = 0.05

    def to_dict(self) -> dict[str, float]:
        """JSON-serialisable form."""
        return asdict(self)


def _mlp(inp: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, out))


class ActorCritic(nn.Module):
    """The actor (logits over ``num_choices`` cuts per group) and the critic (one state value per group).

    Parameters
    ----------
    state_dim : int
        Length of a state vector.
    num_groups : int
        Device groups (one action each).
    num_choices : int
        Cuts a group can be given (``num_blocks + 1``: split points ``0..num_blocks``).
    """

    def __init__(self, state_dim: int, num_groups: int, num_choices: int) -> None:
        super().__init__()
        if min(state_dim, num_groups, num_choices) < 1:
            raise ValueError("state_dim, num_groups and num_choices must be >= 1")
        self.state_dim, self.num_groups, self.num_choices = state_dim, num_groups, num_choices
        self.actor = _mlp(state_dim, num_groups * num_choices)
        self.critic = _mlp(state_dim, num_groups)

    @property
    def action_dim(self) -> int:
        """Actions per state (one per group)."""
        return self.num_groups

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch x groups x choices) and per-group values (batch x groups) of ``state`` (batch x state_dim)."""
        logits = self.actor(state).view(-1, self.num_groups, self.num_choices)
        return logits, self.critic(state)

    def choose(self, state: torch.Tensor | list[float]) -> list[int]:
        """The deployed action of one state: each group's most likely cut (ties: the larger split point)."""
        with torch.no_grad():
            logits, _ = self(torch.as_tensor(state, dtype=torch.float32).reshape(1, -1))
        flipped = logits[0].flip(-1)  # argmax returns the first maximum: flip so ties go to less offloading
        return [self.num_choices - 1 - int(i) for i in flipped.argmax(-1)]


@dataclass
class _Buffer:
    states: list[torch.Tensor] = field(default_factory=list)
    actions: list[torch.Tensor] = field(default_factory=list)
    logprobs: list[torch.Tensor] = field(default_factory=list)
    rewards: list[list[float]] = field(default_factory=list)
    dones: list[bool] = field(default_factory=list)

    def clear(self) -> None:
        for v in (self.states, self.actions, self.logprobs, self.rewards, self.dones):
            v.clear()


class PPOAgent:
    """A PPO agent over ``state_dim`` inputs and one of ``num_choices`` cuts for each of ``num_groups`` groups.

    Parameters
    ----------
    state_dim, num_groups, num_choices : int
        See :class:`ActorCritic`.
    config : PPOConfig, optional
        Hyper-parameters.
    seed : int
        Seed of the network initialisation and of the action sampling.
    """

    def __init__(
        self, state_dim: int, num_groups: int, num_choices: int, config: PPOConfig | None = None, seed: int = 0
    ) -> None:
        self.config = config or PPOConfig()
        self.gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = ActorCritic(state_dim, num_groups, num_choices)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)
        self.updates = 0
        self.buffer = _Buffer()
        self.selection: list[tuple[int, float]] = []

    def policy_fn(self) -> Callable[[list[float]], list[int]]:
        """The deterministic policy (most likely cut per group, nothing recorded): what is deployed."""
        return self.net.choose

    def act(self, state: torch.Tensor | list[float], explore: bool = True) -> list[int]:
        """Pick a cut per group for ``state``; with ``explore`` sample them and remember the step for the update."""
        if not explore:
            return self.net.choose(state)
        s = torch.as_tensor(state, dtype=torch.float32)
        with torch.no_grad():
            logits, _ = self.net(s.unsqueeze(0))
        probs = torch.softmax(logits[0], dim=-1)
        action = torch.multinomial(probs, 1, generator=self.gen).squeeze(-1)
        logp = torch.distributions.Categorical(logits=logits[0]).log_prob(action)
        self.buffer.states.append(s)
        self.buffer.actions.append(action)
        self.buffer.logprobs.append(logp)
        return [int(a) for a in action]

    def record(self, reward: float | Sequence[float], done: bool) -> bool:
        """Store the reward of the last :meth:`act` (one number, or one per group); update every ``update_every``
        steps. Returns whether it did."""
        groups = self.net.num_groups
        if isinstance(reward, int | float):
            values = [float(reward)] * groups
        else:
            values = [float(r) for r in reward]
            if len(values) != groups:
                raise ValueError(f"expected one reward or {groups} per-group rewards, got {len(values)}")
        self.buffer.rewards.append(values)
        self.buffer.dones.append(bool(done))
        if len(self.buffer.rewards) >= self.config.update_every:
            self.update()
            return True
        return False

    def _returns(self) -> torch.Tensor:
        rewards = torch.tensor(self.buffer.rewards, dtype=torch.float32)  # steps x groups
        out, running = [], torch.zeros(rewards.shape[1])
        for r, done in zip(reversed(rewards), reversed(self.buffer.dones), strict=True):
            if done:
                running = torch.zeros_like(running)
            running = r + self.config.gamma * running
            out.append(running)
        ret = torch.stack(out[::-1])
        return (ret - ret.mean()) / (ret.std(unbiased=False) + 1e-5)

    def update(self) -> None:
        """One PPO update on the buffered steps, then clear the buffer."""
        if not self.buffer.rewards:
            return
        cfg = self.config
        returns = self._returns()
        states = torch.stack(self.buffer.states)
        actions = torch.stack(self.buffer.actions)
        old_logp = torch.stack(self.buffer.logprobs)
        for _ in range(cfg.epochs):
            logits, values = self.net(states)
            dist = torch.distributions.Categorical(logits=logits)
            logp = dist.log_prob(actions)  # steps x groups
            entropy = dist.entropy()
            adv = returns - values.detach()
            ratio = torch.exp(logp - old_logp)
            surr = torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
            loss = -surr + 0.5 * (values - returns) ** 2 - cfg.entropy * entropy
            self.optimizer.zero_grad()
            loss.mean().backward()
            self.optimizer.step()
        self.buffer.clear()
        self.updates += 1
