"""The scripts' bodies: train (convlstm.cli.train), evaluate and predict, each with its main(argv). train.py,
evaluate.py and predict.py at the repository's top are their entry points, so an installed command can run them too.
Nothing here is imported until a script is chosen: evaluate and predict never import the training package."""
