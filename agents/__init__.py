"""Multi-task SAC and PPO agents built on mtrl."""
