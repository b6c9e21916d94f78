"""Client side of Flower's central DP with client-side clipping, switched on by the run config.

Flower's :func:`~flwr.clientapp.mod.fixedclipping_mod` clips a node's model update to the norm the server's
:class:`~flwr.serverapp.strategy.DifferentialPrivacyClientSideFixedClipping` sends along. A ClientApp's mods are
fixed when it is created, before any run config is known, so edgeflower's ClientApp carries
:func:`central_dp_mod`, which applies Flower's mod to training messages only when the run's ``central-dp`` is
``"client-fixed"`` and is a pass-through otherwise. Add it to your own ``ClientApp(mods=[...])`` the same way.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

__all__ = ["CLIENT_SIDE_CENTRAL_DP", "central_dp_mod"]

CLIENT_SIDE_CENTRAL_DP = "client-fixed"
"""The ``central-dp`` value that makes nodes clip their own updates."""


def central_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this node's model update with Flower's ``fixedclipping_mod`` when ``central-dp = "client-fixed"``.

    Parameters
    ----------
    msg : Message
        The incoming message; only ``train`` messages are clipped.
    context : Context
        The node's context; its run config decides.
    call_next : callable
        The rest of the ClientApp.
    """
    wanted = context.run_config.get("central-dp", "off") == CLIENT_SIDE_CENTRAL_DP
    if wanted and msg.metadata.message_type.split(".")[0] == "train":
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
