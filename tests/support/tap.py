# A passive tap: records every frame that crosses one network interface (both directions,
# headers and payload) into a file, until it is killed. Run inside the interface's network
# namespace; prints "ready" once it records.
import socket, sys

ETH_P_ALL = 3
tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
tap.bind((sys.argv[1], 0))
with open(sys.argv[2], "wb") as recording:
    print("ready", flush=True)
    while True:
        recording.write(tap.recv(1 << 17))
        recording.flush()
