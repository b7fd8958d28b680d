# Writes into the VM's layer without pause, and checks at each round that the files it wrote
# last round are there as it left them: a migration that lost a file written or removed while
# the layer was pre-copied shows at the first round at the receiver (its memory remembers the
# round, its files must agree). Findings go to /var/tmp/layer/MISMATCH.
import os
import time

d = "/var/tmp/layer"
n = 0
while True:
    if n:
        with open(d + "/counter") as f:
            seen = f.read()
        gone = sorted(x for x in os.listdir(d) if x.startswith("gone-"))
        if seen != str(n) or gone != ["gone-%d" % n]:
            with open(d + "/MISMATCH", "a") as f:
                f.write("round %d: counter %r, %r\n" % (n, seen, gone))
    n += 1
    # Rewritten in place (the same inode), and one file made and one removed each round.
    with open(d + "/counter", "r+" if n > 1 else "w") as f:
        f.truncate(0)
        f.write(str(n))
    open(d + "/gone-%d" % n, "w").close()
    if n > 1:
        os.unlink(d + "/gone-%d" % (n - 1))
    time.sleep(0.005)
