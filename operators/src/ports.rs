//! Named output ports for the operators with several outputs ([`ports!`]), and how a
//! completed timestamp's records go out on them ([`give`], [`give_updates`]).

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilderSession;
use timely::progress::Timestamp;

/// A port of collection updates `(row, time, diff)`.
pub(crate) type Updates<D, T> = CapacityContainerBuilder<Vec<(D, T, isize)>>;
/// A port of plain records.
pub(crate) type Records<D> = CapacityContainerBuilder<Vec<D>>;

/// Declares an operator's output ports, each with its field in the operator's streams
/// struct and one in `Ports`: the field names are the only addresses; port numbers stay
/// inside timely.
macro_rules! ports {
    (
        $streams:ident;
        $( $(#[$doc:meta])* $name:ident: $builder:ty => $wrap:expr ),* $(,)?
    ) => {
        /// The operator's output ports, by name.
        struct Ports<T: ::timely::progress::Timestamp> {
            $( $(#[$doc])* $name: ::timely::dataflow::operators::generic::OutputBuilder<T, $builder>, )*
        }

        /// The output ports activated for one run of the operator's logic.
        struct Sessions<'a, T: ::timely::progress::Timestamp> {
            $( $(#[$doc])* $name: ::timely::dataflow::operators::generic::OutputBuilderSession<'a, T, $builder>, )*
        }

        impl<T: ::timely::progress::Timestamp> Ports<T> {
            /// Adds the ports to `builder`; returns them and the streams they feed.
            fn declare<'scope>(
                builder: &mut ::timely::dataflow::operators::generic::builder_rc::OperatorBuilder<'scope, T>,
            ) -> (Self, $streams<'scope, T>) {
                $( let $name = builder.new_output(); )*
                let ports = Ports {
                    $( $name: ::timely::dataflow::operators::generic::OutputBuilder::from($name.0), )*
                };
                let streams = $streams { $( $name: $wrap($name.1), )* };
                (ports, streams)
            }

            fn activate(&mut self) -> Sessions<'_, T> {
                Sessions { $( $name: self.$name.activate(), )* }
            }
        }
    };
}
pub(crate) use ports;

/// Sends `data` on `port` with the capability, among `caps` (one per port, as a
/// [`Stash`](crate::stash::Stash) holds them), of that port.
pub(crate) fn give<T: Timestamp, D: 'static>(
    port: &mut OutputBuilderSession<'_, T, Records<D>>,
    caps: &[Capability<T>],
    data: impl IntoIterator<Item = D>,
) {
    let cap = &caps[port.output_index()];
    port.session(cap).give_iterator(data.into_iter());
}

/// Sends `rows` as updates at `time` on `port` (see [`give`]).
pub(crate) fn give_updates<T: Timestamp, D: 'static>(
    port: &mut OutputBuilderSession<'_, T, Updates<D, T>>,
    caps: &[Capability<T>],
    time: &T,
    rows: impl IntoIterator<Item = (D, isize)>,
) {
    give(
        port,
        caps,
        rows.into_iter()
            .map(|(row, diff)| (row, time.clone(), diff)),
    );
}
