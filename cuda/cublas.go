//go:build cuda

package cuda

// cuBLAS through cgo: an SGEMM for float32 operands and a GemmEx for bf16
// operands with float32 accumulation and output (CUBLAS_COMPUTE_32F). Both
// take row-major arguments and swap them into cuBLAS's column-major view:
// row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
// Called only on the device goroutine, with its context current.

/*
#cgo LDFLAGS: -lcublas
#include <cublas_v2.h>
#include <library_types.h>

static int cb_create(cublasHandle_t *h) { return (int)cublasCreate(h); }
static int cb_destroy(cublasHandle_t h) { return (int)cublasDestroy(h); }

static int cb_sgemm(cublasHandle_t h, int transA, int transB, int m, int n, int k, float alpha,
                    unsigned long long a, int lda, unsigned long long b, int ldb, float beta, unsigned long long c, int ldc) {
	return (int)cublasSgemm(h, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k,
		&alpha, (const float *)b, ldb, (const float *)a, lda, &beta, (float *)c, ldc);
}

// cb_gemm_bf16: row-major C (m, n) = alpha·A (m, k)·B (n, k)ᵀ + beta·C with
// bf16 A and B, float32 C and float32 accumulation.
static int cb_gemm_bf16(cublasHandle_t h, int m, int n, int k, float alpha,
                        unsigned long long a, int lda, unsigned long long b, int ldb, float beta, unsigned long long c, int ldc) {
	return (int)cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha,
		(const void *)b, CUDA_R_16BF, ldb, (const void *)a, CUDA_R_16BF, lda, &beta,
		(void *)c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
*/
import "C"

import (
	"fmt"

	"gorgonia.org/cu"
)

type cublas struct{ h C.cublasHandle_t }

func newCublas() (*cublas, error) {
	var c cublas
	if st := C.cb_create(&c.h); st != 0 {
		return nil, fmt.Errorf("cublasCreate: status %d", int(st))
	}
	return &c, nil
}

func (c *cublas) close() { C.cb_destroy(c.h) }

func b2i(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

func (c *cublas) sgemm(transA, transB bool, m, n, k int, alpha float32, a cu.DevicePtr, lda int, b cu.DevicePtr, ldb int,
	beta float32, cc cu.DevicePtr, ldc int) error {
	st := C.cb_sgemm(c.h, b2i(transA), b2i(transB), C.int(m), C.int(n), C.int(k), C.float(alpha),
		C.ulonglong(a), C.int(lda), C.ulonglong(b), C.int(ldb), C.float(beta), C.ulonglong(cc), C.int(ldc))
	if st != 0 {
		return fmt.Errorf("cublasSgemm(%d, %d, %d): status %d", m, n, k, int(st))
	}
	return nil
}

func (c *cublas) gemmBF16(m, n, k int, alpha float32, a cu.DevicePtr, lda int, b cu.DevicePtr, ldb int,
	beta float32, cc cu.DevicePtr, ldc int) error {
	st := C.cb_gemm_bf16(c.h, C.int(m), C.int(n), C.int(k), C.float(alpha),
		C.ulonglong(a), C.int(lda), C.ulonglong(b), C.int(ldb), C.float(beta), C.ulonglong(cc), C.int(ldc))
	if st != 0 {
		return fmt.Errorf("cublasGemmEx bf16 (%d, %d, %d): status %d", m, n, k, int(st))
	}
	return nil
}
