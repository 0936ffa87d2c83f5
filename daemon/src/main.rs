fn main() {
    std::process::exit(mantle_daemon::cli::main());
}
