"""The scheduler: pure data in, data out. Never imports a device or transport module."""
from edgesched.sched.policies import POLICIES, Policy, make_policy
from edgesched.sched.state import Request, SchedState

__all__ = ["POLICIES", "Policy", "Request", "SchedState", "make_policy"]
