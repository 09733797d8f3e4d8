"""`moat iterate`: the loop from served traffic to a better model (select, train, gate, canary, promote)."""
