"""Trust between participants: who sent a message (the broker's user, never a header),
signatures and sealed boxes with each participant's keys, the hash-chained audit trail and
the signed checkpoints partners hold of it (docs/architecture.md, "Packages";
docs/security.md).
"""
