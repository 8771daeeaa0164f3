// CTNODE_CPU_CLONES: compile a hot CPU loop three times (x86-64-v4: AVX-512; x86-64-v3: AVX2 + FMA;
// baseline x86-64), the one the CPU runs picked at load time, so the extension stays portable.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define CTNODE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CTNODE_CPU_CLONES
#endif
