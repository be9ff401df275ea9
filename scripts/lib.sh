# Helpers shared by the scripts in this folder; `source "$HERE/lib.sh"` after setting
# ME (the name messages start with).

# wait_line FILE REGEX PID [SECONDS]: until FILE has a line matching REGEX (default 60 s);
# fails, showing FILE, if PID exits first or the time runs out.
wait_line() {
    local file=$1 re=$2 pid=$3 limit=${4:-60} i
    for ((i = 0; i < limit * 50; i++)); do
        grep -qE "$re" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || {
            echo "${ME:-script}: process $pid exited before printing /$re/; its output:" >&2
            sed 's/^/  | /' "$file" >&2
            return 1
        }
        sleep 0.02
    done
    echo "${ME:-script}: no /$re/ in $file after ${limit}s" >&2
    return 1
}

# free_port: a port nobody uses on 127.0.0.1, for UDP and TCP alike (needs python3).
free_port() {
    python3 - <<'PY'
import socket
while True:
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(p)
    break
PY
}
