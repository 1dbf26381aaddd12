// A JIT workload for the e2e suite `jit`: burns CPU in hotMethod, called from outer, for args[0] ms.
public class JitHot {
    static long hotMethod(long n) {
        long acc = 0;
        for (long i = 0; i < n; i++) acc = (acc * 31 + i) % 1000003;
        return acc;
    }
    static long outer() { return hotMethod(200000); }
    public static void main(String[] args) {
        long until = System.currentTimeMillis() + Long.parseLong(args.length > 0 ? args[0] : "5000");
        long sink = 0;
        while (System.currentTimeMillis() < until) sink += outer();
        System.out.println(sink > 0 ? "done" : "zero");
    }
}
