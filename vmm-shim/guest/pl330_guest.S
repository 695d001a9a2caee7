/*
 * pl330_guest.S - a bare-metal x86 (32-bit protected mode, no paging) PL330
 * driver, run by vmm-shim inside a KVM guest.
 *
 * It behaves like Linux's drivers/dma/pl330.c towards the device:
 *   probe:    PeriphID/PCellID at 0xFE0..0xFFC (low byte of each word), CR0, CRD;
 *   prepare:  writes microcode into guest RAM: DMAMOV CCR, DMAMOV SAR, DMAMOV DAR,
 *             up to two nested DMALP around DMALD/DMAST, an optional tail with a
 *             second DMAMOV CCR (Linux's _dregs), DMASEV ev, DMAEND;
 *   start:    INTEN |= 1<<ev once; per transfer: poll DBGSTATUS, DBGINST0/1 = DMAGO
 *             (manager thread), DBGCMD = 0;
 *   wait:     sti; hlt until the interrupt handler saw the event;
 *   ISR:      FSRD (FSM), FSRC (FSC) [+ CSR/FTR of a faulting channel], ES, INTEN,
 *             then INTCLR; then EOI to the 8259 PIC;
 *   fault:    a transfer flagged "expect fault" polls FSRD/FSRC instead, records
 *             FTRD/FTR/CSR and kills the channel (DMAKILL via the debug interface).
 *
 * Everything variable (device base, transfers, loop shapes) comes from the
 * parameter block the shim writes at PARAMS; results go to RESULTS and are
 * announced through port I/O (the "mailbox"):
 *   out 0xf0, eax=i     transfer i finished, its record is in RESULTS
 *   out 0xf4, eax=code  all done (code 0 = ran all transfers, else a reason)
 *   out 0xf8, eax=vec   unexpected exception/interrupt vector (guest stops)
 * Layout constants must match vmm-shim/src/layout.rs.
 */
        .intel_syntax noprefix
        .code32

        .equ PARAMS,        0x9000
        .equ RESULTS,       0xA000
        .equ IDT_BASE,      0x8000
        .equ VARS,          0x8800
        .equ STACK_TOP,     0x20000

        .equ PORT_RESULT,   0xf0
        .equ PORT_DONE,     0xf4
        .equ PORT_PANIC,    0xf8

        /* parameter block */
        .equ P_MAGIC,  0x00
        .equ P_DEV,    0x04
        .equ P_NUM,    0x08
        .equ P_ELCR,   0x0c
        .equ P_VEC,    0x10
        .equ P_LINE,   0x14
        .equ P_EVENT,  0x18
        .equ P_CHAN,   0x1c
        .equ P_SPIN,   0x20
        .equ P_XFERS,  0x40
        .equ XFER_SHIFT, 6
        /* transfer descriptor */
        .equ X_SRC,    0
        .equ X_DST,    4
        .equ X_LEN,    8
        .equ X_MCODE,  12
        .equ X_CCR,    16
        .equ X_OUTER,  20
        .equ X_INNER,  24
        .equ X_UNROLL, 28
        .equ X_TCCR,   32
        .equ X_TAIL,   36
        .equ X_FLAGS,  40

        /* results header */
        .equ R_PERIPH, 0
        .equ R_PCELL,  4
        .equ R_CR0,    8
        .equ R_CRD,    12
        .equ R_IRQS,   16
        .equ R_SPUR,   20
        .equ R_STATUS, 24
        .equ R_RECS,   0x40
        .equ REC_SHIFT, 6
        /* per-transfer record */
        .equ RC_STATUS,   0
        .equ RC_FSRD,     4
        .equ RC_FSRC,     8
        .equ RC_ES,       12
        .equ RC_INTEN,    16
        .equ RC_FTR,      20
        .equ RC_FTRD,     24
        .equ RC_CSR,      28
        .equ RC_MISMATCH, 32
        .equ RC_IRQS,     36
        .equ RC_MLEN,     40
        .equ RC_CLEARED,  44

        /* record status codes */
        .equ ST_DONE,        1
        .equ ST_BUSY_TIMEOUT,2
        .equ ST_NO_FAULT,    3
        .equ ST_FAULT,       4

        /* done codes */
        .equ DONE_OK,        0
        .equ DONE_BAD_PARAMS,1
        .equ DONE_BAD_ID,    2

        /* variables */
        .equ V_DEV,      VARS+0x00
        .equ V_DONE,     VARS+0x04
        .equ V_FSRD,     VARS+0x08
        .equ V_FSRC,     VARS+0x0c
        .equ V_ES,       VARS+0x10
        .equ V_INTEN,    VARS+0x14
        .equ V_IRQS,     VARS+0x18
        .equ V_SPUR,     VARS+0x1c
        .equ V_XIRQS,    VARS+0x20
        .equ V_NS,       VARS+0x24
        .equ V_CLEARED,  VARS+0x28
        .equ V_FTR,      VARS+0x2c
        .equ V_CSR,      VARS+0x30

        /* PL330 registers */
        .equ DS,        0x000
        .equ INTEN,     0x020
        .equ REG_ES,    0x024
        .equ INTCLR,    0x02c
        .equ FSRD,      0x030
        .equ FSRC,      0x034
        .equ FTRD,      0x038
        .equ FTR0,      0x040
        .equ CSR0,      0x100
        .equ DBGSTATUS, 0xd00
        .equ DBGCMD,    0xd04
        .equ DBGINST0,  0xd08
        .equ DBGINST1,  0xd0c
        .equ REG_CR0,   0xe00
        .equ CRD,       0xe14

        .text
        .globl _start
_start:
        cli
        cld
        mov     esp, STACK_TOP
        cmp     dword ptr [PARAMS+P_MAGIC], 0x48534c50      /* "PLSH" */
        je      1f
        mov     eax, DONE_BAD_PARAMS
        jmp     finish
1:
        /* zero the variables */
        mov     edi, VARS
        xor     eax, eax
        mov     ecx, 16
        rep     stosd
        mov     ebx, [PARAMS+P_DEV]
        mov     [V_DEV], ebx

        call    build_idt
        call    init_pic

        /* ---- probe, as the AMBA bus and pl330_probe do ---- */
        mov     esi, 0xfe0
        call    read_id
        mov     [RESULTS+R_PERIPH], eax
        mov     esi, 0xff0
        call    read_id
        mov     [RESULTS+R_PCELL], eax
        mov     eax, [ebx+REG_CR0]
        mov     [RESULTS+R_CR0], eax
        shr     eax, 2                      /* mgr_ns_at_rst -> DMAGO ns bit */
        and     eax, 1
        mov     [V_NS], eax
        mov     eax, [ebx+CRD]
        mov     [RESULTS+R_CRD], eax
        cmp     dword ptr [RESULTS+R_PCELL], 0xb105f00d
        jne     bad_id
        mov     eax, [RESULTS+R_PERIPH]
        and     eax, 0xfffff
        cmp     eax, 0x41330
        je      2f
bad_id:
        mov     eax, DONE_BAD_ID
        jmp     finish
2:
        /* route our event to the interrupt line: INTEN |= 1 << ev */
        mov     ecx, [PARAMS+P_EVENT]
        mov     edx, 1
        shl     edx, cl
        mov     eax, [ebx+INTEN]
        or      eax, edx
        mov     [ebx+INTEN], eax
        sti

        /* ---- transfers ---- */
        xor     ebp, ebp
xfer_loop:
        cmp     ebp, [PARAMS+P_NUM]
        jae     all_done
        mov     esi, ebp
        shl     esi, XFER_SHIFT
        add     esi, PARAMS+P_XFERS
        mov     edi, ebp
        shl     edi, REC_SHIFT
        add     edi, RESULTS+R_RECS
        push    edi                         /* record */

        call    build_mcode                 /* eax = microcode length */
        mov     edi, [esp]
        mov     [edi+RC_MLEN], eax

        cli
        mov     dword ptr [V_DONE], 0
        mov     dword ptr [V_XIRQS], 0
        mov     dword ptr [V_FTR], 0
        mov     dword ptr [V_CSR], 0
        sti
        call    dmago
        mov     edi, [esp]
        test    eax, eax
        jz      3f
        mov     dword ptr [edi+RC_STATUS], ST_BUSY_TIMEOUT
        jmp     xfer_report
3:
        test    dword ptr [esi+X_FLAGS], 1
        jnz     fault_path

wait_irq:
        cli
        cmp     dword ptr [V_DONE], 0
        jne     got_irq
        sti
        hlt                                 /* sti's shadow: no lost wakeup */
        jmp     wait_irq
got_irq:
        sti
        mov     dword ptr [edi+RC_STATUS], ST_DONE
        mov     eax, [V_FSRD]
        mov     [edi+RC_FSRD], eax
        mov     eax, [V_FSRC]
        mov     [edi+RC_FSRC], eax
        mov     eax, [V_ES]
        mov     [edi+RC_ES], eax
        mov     eax, [V_INTEN]
        mov     [edi+RC_INTEN], eax
        mov     eax, [V_CLEARED]
        mov     [edi+RC_CLEARED], eax
        mov     eax, [V_FTR]
        mov     [edi+RC_FTR], eax
        mov     eax, [V_CSR]
        mov     [edi+RC_CSR], eax
        jmp     compare

fault_path:
        mov     ecx, [PARAMS+P_SPIN]
4:
        mov     eax, [ebx+FSRC]
        test    eax, eax
        jnz     5f
        mov     eax, [ebx+FSRD]
        test    eax, 1
        jnz     5f
        dec     ecx
        jnz     4b
        mov     dword ptr [edi+RC_STATUS], ST_NO_FAULT
        jmp     compare
5:
        mov     dword ptr [edi+RC_STATUS], ST_FAULT
        mov     eax, [ebx+FSRD]
        mov     [edi+RC_FSRD], eax
        mov     eax, [ebx+FSRC]
        mov     [edi+RC_FSRC], eax
        mov     eax, [ebx+FTRD]
        mov     [edi+RC_FTRD], eax
        mov     ecx, [PARAMS+P_CHAN]
        mov     eax, [ebx+ecx*4+FTR0]
        mov     [edi+RC_FTR], eax
        mov     eax, [ebx+ecx*8+CSR0]
        mov     [edi+RC_CSR], eax
        mov     eax, [ebx+REG_ES]
        mov     [edi+RC_ES], eax
        /* stop the faulting thread(s) like pl330's _stop(): DMAKILL */
        test    dword ptr [edi+RC_FSRC], 0xff
        jz      6f
        mov     eax, [PARAMS+P_CHAN]
        shl     eax, 8
        or      eax, 0x00010001             /* DMAKILL, channel thread */
        call    dbg_insn
6:
        test    dword ptr [edi+RC_FSRD], 1
        jz      compare
        mov     eax, 0x00010000             /* DMAKILL, manager thread */
        call    dbg_insn

compare:
        mov     eax, [V_XIRQS]
        mov     [edi+RC_IRQS], eax
        push    esi
        push    edi
        mov     ecx, [esi+X_LEN]
        mov     edi, [esi+X_DST]
        mov     esi, [esi+X_SRC]
        mov     edx, esi
        mov     eax, 0xffffffff
        test    ecx, ecx
        jz      7f
        repe    cmpsb
        je      7f
        lea     eax, [esi-1]
        sub     eax, edx
7:
        pop     edi
        pop     esi
        mov     [edi+RC_MISMATCH], eax

xfer_report:
        add     esp, 4
        mov     eax, ebp
        out     PORT_RESULT, eax
        inc     ebp
        jmp     xfer_loop

all_done:
        mov     eax, DONE_OK
finish:
        mov     [RESULTS+R_STATUS], eax
        mov     edx, [V_IRQS]
        mov     [RESULTS+R_IRQS], edx
        mov     edx, [V_SPUR]
        mov     [RESULTS+R_SPUR], edx
        out     PORT_DONE, eax
halt_forever:
        cli
        hlt
        jmp     halt_forever

/* ---------------------------------------------------------------------------
 * read_id: esi = offset of the first of four ID words; eax = the four low
 * bytes assembled little-endian (as amba_read_cid/pid do).
 */
read_id:
        xor     eax, eax
        add     esi, ebx
        mov     ecx, 3
8:
        mov     edx, [esi+ecx*4]
        and     edx, 0xff
        shl     eax, 8
        or      eax, edx
        dec     ecx
        jns     8b
        ret

/* ---------------------------------------------------------------------------
 * dmago: start the microcode of descriptor esi on channel P_CHAN through the
 * debug interface, as pl330's _trigger()/_execute_DBGINSN() do.  eax = 0 on
 * success, 1 if DBGSTATUS stayed busy.
 */
dmago:
        mov     eax, [V_NS]
        shl     eax, 1
        or      eax, 0xa0                   /* DMAGO | ns<<1 */
        mov     edx, [PARAMS+P_CHAN]
        shl     edx, 8
        or      eax, edx                    /* insn[1] = channel */
        shl     eax, 16                     /* insn[0]<<16 | insn[1]<<24, manager */
        mov     edx, [esi+X_MCODE]
        /* fall through with edx = DBGINST1 */
        jmp     dbg_insn_1

/* dbg_insn: eax = DBGINST0, DBGINST1 = 0.  dbg_insn_1: edx = DBGINST1. */
dbg_insn:
        xor     edx, edx
dbg_insn_1:
        push    ecx
        push    eax
        mov     ecx, [PARAMS+P_SPIN]
9:
        mov     eax, [ebx+DBGSTATUS]
        test    eax, 1
        jz      10f
        dec     ecx
        jnz     9b
        pop     eax
        pop     ecx
        mov     eax, 1
        ret
10:
        pop     eax
        mov     [ebx+DBGINST0], eax
        mov     [ebx+DBGINST1], edx
        mov     dword ptr [ebx+DBGCMD], 0
        pop     ecx
        xor     eax, eax
        ret

/* ---------------------------------------------------------------------------
 * build_mcode: esi = descriptor.  Writes the program at X_MCODE, returns its
 * length in eax.  Preserves esi, ebx, ebp.
 */
build_mcode:
        push    ebp
        mov     edi, [esi+X_MCODE]
        mov     ebp, edi                    /* program start */
        mov     al, 1                       /* DMAMOV CCR */
        mov     edx, [esi+X_CCR]
        call    emit_mov
        mov     al, 0                       /* DMAMOV SAR */
        mov     edx, [esi+X_SRC]
        call    emit_mov
        mov     al, 2                       /* DMAMOV DAR */
        mov     edx, [esi+X_DST]
        call    emit_mov

        mov     eax, [esi+X_OUTER]
        cmp     eax, 1
        jbe     11f
        mov     byte ptr [edi], 0x22        /* DMALP lc1 */
        dec     eax
        mov     [edi+1], al
        add     edi, 2
        push    edi                         /* outer body start */
        mov     ecx, [esi+X_INNER]
        mov     edx, [esi+X_UNROLL]
        call    emit_loop0
        pop     edx
        mov     ecx, edi
        sub     ecx, edx                    /* backward jump */
        mov     byte ptr [edi], 0x3c        /* DMALPEND lc1 */
        mov     [edi+1], cl
        add     edi, 2
        jmp     12f
11:
        mov     ecx, [esi+X_INNER]
        mov     edx, [esi+X_UNROLL]
        call    emit_loop0
12:
        mov     ecx, [esi+X_TAIL]
        test    ecx, ecx
        jz      13f
        mov     al, 1                       /* second DMAMOV CCR (Linux _dregs) */
        mov     edx, [esi+X_TCCR]
        call    emit_mov
        mov     ecx, [esi+X_TAIL]
        mov     edx, 1
        call    emit_loop0
13:
        mov     eax, [PARAMS+P_EVENT]
        shl     eax, 3
        mov     byte ptr [edi], 0x34        /* DMASEV ev */
        mov     [edi+1], al
        mov     byte ptr [edi+2], 0x00      /* DMAEND */
        add     edi, 3
        mov     eax, edi
        sub     eax, ebp
        pop     ebp
        ret

/* emit_mov: al = rd (0 SAR, 1 CCR, 2 DAR), edx = imm32 */
emit_mov:
        mov     byte ptr [edi], 0xbc
        mov     [edi+1], al
        mov     [edi+2], edx
        add     edi, 6
        ret

/* emit_loop0: ecx = iterations (1..256), edx = LD/ST pairs in the body */
emit_loop0:
        cmp     ecx, 1
        jbe     emit_body
        mov     byte ptr [edi], 0x20        /* DMALP lc0 */
        dec     ecx
        mov     [edi+1], cl
        add     edi, 2
        push    edi
        call    emit_body
        pop     edx
        mov     ecx, edi
        sub     ecx, edx
        mov     byte ptr [edi], 0x38        /* DMALPEND lc0 */
        mov     [edi+1], cl
        add     edi, 2
        ret
emit_body:
        mov     ecx, edx
14:
        mov     byte ptr [edi], 0x04        /* DMALD */
        mov     byte ptr [edi+1], 0x08      /* DMAST */
        add     edi, 2
        dec     ecx
        jnz     14b
        ret

/* ---------------------------------------------------------------------------
 * Interrupts.
 */
build_idt:
        mov     edi, IDT_BASE
        xor     ecx, ecx
15:
        /* pick the handler for vector ecx */
        cmp     ecx, 32
        jae     16f
        mov     eax, ecx
        shl     eax, 4
        add     eax, offset exc_stubs
        jmp     19f
16:
        mov     edx, [PARAMS+P_VEC]
        add     edx, [PARAMS+P_LINE]
        cmp     ecx, edx
        jne     17f
        mov     eax, offset irq_isr
        jmp     19f
17:
        mov     edx, [PARAMS+P_VEC]
        cmp     ecx, edx
        jb      18f
        add     edx, 16
        cmp     ecx, edx
        jae     18f
        mov     eax, offset pic_other
        jmp     19f
18:
        mov     eax, offset unexpected
19:
        mov     edx, eax
        and     eax, 0xffff
        or      eax, 0x00080000             /* selector 0x08 */
        mov     [edi], eax
        and     edx, 0xffff0000
        or      edx, 0x8e00                 /* present, DPL0, 32-bit interrupt gate */
        mov     [edi+4], edx
        add     edi, 8
        inc     ecx
        cmp     ecx, 256
        jb      15b
        lidt    [idt_desc]
        ret

init_pic:
        mov     al, 0x11                    /* ICW1: edge, cascade, ICW4 */
        out     0x20, al
        out     0xa0, al
        mov     eax, [PARAMS+P_VEC]         /* ICW2: vector bases */
        out     0x21, al
        add     al, 8
        out     0xa1, al
        mov     al, 4                       /* ICW3 */
        out     0x21, al
        mov     al, 2
        out     0xa1, al
        mov     al, 1                       /* ICW4: 8086 mode, normal EOI */
        out     0x21, al
        out     0xa1, al
        /* unmask only our line (master, line != 2) */
        mov     ecx, [PARAMS+P_LINE]
        mov     edx, 1
        shl     edx, cl
        mov     eax, edx
        not     eax
        out     0x21, al
        mov     al, 0xff
        out     0xa1, al
        /* ELCR: level-triggered for our line when asked (resample irqfd) */
        xor     eax, eax
        cmp     dword ptr [PARAMS+P_ELCR], 0
        je      20f
        mov     eax, edx
20:
        mov     dx, 0x4d0
        out     dx, al
        ret

/* The device interrupt, in pl330_update()'s order. */
irq_isr:
        pushad
        mov     ebx, [V_DEV]
        inc     dword ptr [V_IRQS]
        inc     dword ptr [V_XIRQS]
        mov     eax, [ebx+FSRD]             /* FSM */
        mov     [V_FSRD], eax
        mov     eax, [ebx+FSRC]             /* FSC */
        mov     [V_FSRC], eax
        test    eax, eax
        jz      21f
        mov     ecx, [PARAMS+P_CHAN]
        mov     eax, [ebx+ecx*8+CSR0]
        mov     [V_CSR], eax
        mov     eax, [ebx+ecx*4+FTR0]
        mov     [V_FTR], eax
21:
        mov     eax, [ebx+REG_ES]
        mov     [V_ES], eax
        mov     esi, eax
        mov     eax, [ebx+INTEN]
        mov     [V_INTEN], eax
        and     esi, eax
        jz      22f
        mov     [ebx+INTCLR], esi
        mov     [V_CLEARED], esi
        mov     dword ptr [V_DONE], 1
        jmp     23f
22:
        inc     dword ptr [V_SPUR]
23:
        mov     al, 0x20                    /* non-specific EOI to the master PIC */
        out     0x20, al
        popad
        jmp     iret_soft

pic_other:
        push    eax
        mov     al, 0x20
        out     0xa0, al
        out     0x20, al
        pop     eax
        jmp     iret_soft

/*
 * iret_soft: returns from an interrupt taken at the same privilege level
 * without IRET.  KVM's instruction emulator does not implement a protected-mode
 * IRET, and on hosts where this guest's IRET reaches the emulator (seen with
 * the PVM flavour of KVM) it ends in KVM_EXIT_INTERNAL_ERROR.  Stack on
 * entry: EIP, CS, EFLAGS (CS is unchanged: one flat code segment).
 */
iret_soft:
        push    eax                         /* eax, eip, cs, eflags */
        mov     eax, [esp+4]
        xchg    eax, [esp+12]               /* eflags slot <- eip; eax = eflags */
        mov     [esp+8], eax                /* cs slot <- eflags */
        pop     eax                         /* eip, eflags, eip */
        add     esp, 4                      /* eflags, eip */
        popfd
        ret

unexpected:
        mov     eax, 0xff
        out     PORT_PANIC, eax
        cli
        hlt
        jmp     unexpected

        .balign 16
exc_stubs:
        .irp    n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .balign 16
        mov     eax, \n
        out     PORT_PANIC, eax
        cli
        hlt
        jmp     .
        .endr

        .balign 8
idt_desc:
        .word   256*8-1
        .long   IDT_BASE
