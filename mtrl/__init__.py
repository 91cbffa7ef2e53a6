"""mtrl: multi-task reinforcement learning with gradient balancers (foundation layer)."""
