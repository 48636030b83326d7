"""The agreement's bookkeeping: the ledgers, participants' live status, provenance of
every kept row (§20), deletion, correction and blocking (§22-24), retention (§21),
disclosures (§14-15), incidents (§17), subject requests (§25), the annual review (§27)
and quality assurance (§28) (docs/architecture.md, "Packages").
"""
