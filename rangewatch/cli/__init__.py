"""The command line: `rangewatch check | demo | report | tensorboard | conventions`."""
