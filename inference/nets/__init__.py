"""Networks: the summary (embedding) networks, the NSF and flow-matching estimators, the classifier.

Each is a plain ``torch.nn.Module`` built from a config object; none knows about Ray or stores.
"""
