/* SPDX-License-Identifier: GPL-2.0 */
/*
 * EXEC-1: the interrupted context survives an inline handler.
 *
 * aem_exec1_spin() fills every general-purpose register but rsp, and
 * ymm0-ymm15, with known patterns, spins until aem_exec1_flag is set (by a
 * handler that ran in between), then checks them all.  It returns 0 when
 * every register survived, 1 + i for the first general-purpose register i
 * (rax, rbx, rcx, rdx, rsi, rdi, rbp, r8 ... r15) that did not, or 100 + i
 * for ymm i.
 *
 * aem_exec1_clobber() is what the handler calls: it overwrites every
 * register the C ABI lets a function overwrite, vector registers included.
 */
	.intel_syntax noprefix

	.data
	.globl	aem_exec1_flag
	.align	8
aem_exec1_flag:
	.quad	0

	.section .rodata
	.align	32
gpr_patterns:
	.quad	0x1111111111111111, 0x2222222222222222, 0x3333333333333333
	.quad	0x4444444444444444, 0x5555555555555555, 0x6666666666666666
	.quad	0x7777777777777777, 0x8888888888888888, 0x9999999999999999
	.quad	0xaaaaaaaaaaaaaaaa, 0xbbbbbbbbbbbbbbbb, 0xcccccccccccccccc
	.quad	0xdddddddddddddddd, 0xeeeeeeeeeeeeeeee, 0x0123456789abcdef
	.align	32
ymm_table:
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	.rept	32
	.byte	(\i * 16 + 7) & 0xff
	.endr
	.endr
junk:
	.fill	32, 1, 0xa5

	.text
	.globl	aem_exec1_spin
	.type	aem_exec1_spin, @function
aem_exec1_spin:
	push	rbx
	push	rbp
	push	r12
	push	r13
	push	r14
	push	r15
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	vmovdqu	ymm\i, [rip + ymm_table + 32 * \i]
	.endr
	mov	rax, [rip + gpr_patterns + 0*8]
	mov	rbx, [rip + gpr_patterns + 1*8]
	mov	rcx, [rip + gpr_patterns + 2*8]
	mov	rdx, [rip + gpr_patterns + 3*8]
	mov	rsi, [rip + gpr_patterns + 4*8]
	mov	rdi, [rip + gpr_patterns + 5*8]
	mov	rbp, [rip + gpr_patterns + 6*8]
	mov	r8,  [rip + gpr_patterns + 7*8]
	mov	r9,  [rip + gpr_patterns + 8*8]
	mov	r10, [rip + gpr_patterns + 9*8]
	mov	r11, [rip + gpr_patterns + 10*8]
	mov	r12, [rip + gpr_patterns + 11*8]
	mov	r13, [rip + gpr_patterns + 12*8]
	mov	r14, [rip + gpr_patterns + 13*8]
	mov	r15, [rip + gpr_patterns + 14*8]
1:	pause
	cmp	qword ptr [rip + aem_exec1_flag], 0
	je	1b

	/* Save the vector registers, then the GPRs, before using any. */
	sub	rsp, 512
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	vmovdqu	[rsp + 32 * \i], ymm\i
	.endr
	.irp	reg, r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax
	push	\reg
	.endr
	/* [rsp + 8*i] is GPR i, in the order of gpr_patterns. */
	xor	ecx, ecx
	lea	rsi, [rip + gpr_patterns]
2:	mov	rdx, [rsp + 8*rcx]
	cmp	rdx, [rsi + 8*rcx]
	jne	3f
	inc	rcx
	cmp	rcx, 15
	jne	2b
	add	rsp, 15*8

	/* The saved vector registers must match the table byte for byte. */
	mov	rsi, rsp
	lea	rdi, [rip + ymm_table]
	mov	rcx, 512
	cld
	repe	cmpsb
	je	4f
	lea	rax, [rip + ymm_table]
	sub	rdi, rax
	dec	rdi
	shr	rdi, 5
	lea	eax, [rdi + 100]
	jmp	5f
4:	xor	eax, eax
	jmp	5f

3:	add	rsp, 15*8
	lea	eax, [rcx + 1]
5:	add	rsp, 512
	vzeroupper
	pop	r15
	pop	r14
	pop	r13
	pop	r12
	pop	rbp
	pop	rbx
	ret
	.size	aem_exec1_spin, .-aem_exec1_spin

	.globl	aem_exec1_clobber
	.type	aem_exec1_clobber, @function
aem_exec1_clobber:
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	vmovdqu	ymm\i, [rip + junk]
	.endr
	mov	rax, -1
	mov	rcx, -1
	mov	rdx, -1
	mov	rsi, -1
	mov	rdi, -1
	mov	r8, -1
	mov	r9, -1
	mov	r10, -1
	mov	r11, -1
	/* The upper ymm halves stay dirty on purpose: no vzeroupper. */
	ret
	.size	aem_exec1_clobber, .-aem_exec1_clobber

	.section .note.GNU-stack,"",@progbits
