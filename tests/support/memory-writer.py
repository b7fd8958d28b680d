import hashlib, os, time
size = 256 << 20
memory = bytearray(size)
block = os.urandom(1 << 20)
for i in range(size >> 20):
    memory[i << 20:(i + 1) << 20] = block
    memory[i << 20:(i << 20) + 8] = i.to_bytes(8, "little")
def publish(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)
publish("/run/sum-before", hashlib.sha256(memory).hexdigest())
longest, ticks, last = 0.0, 0, time.time()
while True:
    time.sleep(0.005)
    now = time.time()
    if now - last > longest:
        longest = now - last
        publish("/run/longest-gap", "%d" % (longest * 1000))
    last = now
    ticks += 1
    at = (ticks * 4099 * 4096) % size
    memory[at] = memory[at]
    if os.path.exists("/run/sum-request"):
        os.remove("/run/sum-request")
        publish("/run/sum-after", hashlib.sha256(memory).hexdigest())
        last = time.time()
