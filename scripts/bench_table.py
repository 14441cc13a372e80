"""Print a compact Markdown table from a pytest-benchmark JSON file (scripts/gpu_check.sh)."""
import json
import sys


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    info = data.get("machine_info", {})
    print(f"machine: {info.get('node', '?')}  commit: {data.get('commit_info', {}).get('id', '?')[:10]}")
    print("| benchmark | median | extra |")
    print("|---|---|---|")
    for b in data["benchmarks"]:
        med = b["stats"]["median"]
        unit = f"{med * 1e6:.1f} us" if med < 1e-3 else f"{med * 1e3:.3f} ms"
        extra = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in sorted(b.get("extra_info", {}).items()))
        print(f"| {b['name']} | {unit} | {extra} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
