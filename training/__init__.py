"""Training for the zoo: the distributed trainer, Cuttlefish's stable-rank switch, data and recipes."""
