//! Answers one Modbus request from the simulated register tables, as a device would, so the
//! adapter's error handling can be tested against it. Pure: a request and the registers in, a
//! response or an exception out. Part of the device simulators used by `fieldline up`, the
//! tests and the benchmarks.
//!
//! The checks follow the order of the Modbus Application Protocol Specification V1.1b3,
//! §6.1–6.12: the function is supported (else IllegalFunction), then the quantity is within
//! the protocol limits (else IllegalDataValue), then the addresses are within the table (else
//! IllegalDataAddress).

use tokio_modbus::{ExceptionCode, Request, Response};

use crate::Registers;

/// Limits on one request's quantity, from the specification's function code sections.
const MAX_READ_BITS: u16 = 2000;
const MAX_READ_REGISTERS: u16 = 125;
const MAX_WRITE_BITS: u16 = 1968;
const MAX_WRITE_REGISTERS: u16 = 123;

/// Applies `request` to `registers` and returns the response or the exception to send.
pub(crate) fn handle(
    registers: &mut Registers,
    request: &Request<'_>,
) -> Result<Response, ExceptionCode> {
    match request {
        Request::ReadCoils(address, quantity) => {
            read(&registers.coils, *address, *quantity, MAX_READ_BITS).map(Response::ReadCoils)
        }
        Request::ReadDiscreteInputs(address, quantity) => {
            read(&registers.discrete, *address, *quantity, MAX_READ_BITS)
                .map(Response::ReadDiscreteInputs)
        }
        Request::ReadHoldingRegisters(address, quantity) => {
            let limit = registers.max_read_registers.min(MAX_READ_REGISTERS);
            read(&registers.holding, *address, *quantity, limit).map(Response::ReadHoldingRegisters)
        }
        Request::ReadInputRegisters(address, quantity) => {
            let limit = registers.max_read_registers.min(MAX_READ_REGISTERS);
            read(&registers.input, *address, *quantity, limit).map(Response::ReadInputRegisters)
        }
        Request::WriteSingleCoil(address, value) => {
            write(&mut registers.coils, *address, &[*value], 1)?;
            Ok(Response::WriteSingleCoil(*address, *value))
        }
        Request::WriteSingleRegister(address, value) => {
            write(&mut registers.holding, *address, &[*value], 1)?;
            Ok(Response::WriteSingleRegister(*address, *value))
        }
        Request::WriteMultipleCoils(address, values) => {
            let quantity = write(&mut registers.coils, *address, values, MAX_WRITE_BITS)?;
            Ok(Response::WriteMultipleCoils(*address, quantity))
        }
        Request::WriteMultipleRegisters(address, values) => {
            let quantity = write(
                &mut registers.holding,
                *address,
                values,
                MAX_WRITE_REGISTERS,
            )?;
            Ok(Response::WriteMultipleRegisters(*address, quantity))
        }
        // Mask write (22), read/write multiple (23), report server id (17), device
        // identification (43) and anything custom: the simulated device does not have them.
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

fn read<T: Copy>(
    table: &[T],
    address: u16,
    quantity: u16,
    max_quantity: u16,
) -> Result<Vec<T>, ExceptionCode> {
    if !(1..=max_quantity).contains(&quantity) {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let start = usize::from(address);
    table
        .get(start..start + usize::from(quantity))
        .map(<[T]>::to_vec)
        .ok_or(ExceptionCode::IllegalDataAddress)
}

/// Returns the quantity written.
fn write<T: Copy>(
    table: &mut [T],
    address: u16,
    values: &[T],
    max_quantity: u16,
) -> Result<u16, ExceptionCode> {
    let quantity = u16::try_from(values.len())
        .ok()
        .filter(|quantity| (1..=max_quantity).contains(quantity))
        .ok_or(ExceptionCode::IllegalDataValue)?;
    let start = usize::from(address);
    let target = table
        .get_mut(start..start + values.len())
        .ok_or(ExceptionCode::IllegalDataAddress)?;
    target.copy_from_slice(values);
    Ok(quantity)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    const LAST: u16 = (Registers::DEFAULT_LEN - 1) as u16;

    fn answer(registers: &mut Registers, request: Request<'_>) -> Result<Response, ExceptionCode> {
        handle(registers, &request)
    }

    #[test]
    fn reads_return_exactly_the_requested_entries() {
        let mut registers = Registers::default();
        registers.holding[10..13].copy_from_slice(&[1, 2, 3]);
        registers.input[LAST as usize] = 7;
        registers.coils[3] = true;
        registers.discrete[0] = true;

        assert_eq!(
            answer(&mut registers, Request::ReadHoldingRegisters(10, 3)),
            Ok(Response::ReadHoldingRegisters(vec![1, 2, 3]))
        );
        assert_eq!(
            answer(&mut registers, Request::ReadInputRegisters(LAST, 1)),
            Ok(Response::ReadInputRegisters(vec![7]))
        );
        assert_eq!(
            answer(&mut registers, Request::ReadCoils(2, 3)),
            Ok(Response::ReadCoils(vec![false, true, false]))
        );
        assert_eq!(
            answer(&mut registers, Request::ReadDiscreteInputs(0, 2)),
            Ok(Response::ReadDiscreteInputs(vec![true, false]))
        );
    }

    #[test]
    fn writes_land_where_addressed_and_echo_the_request() {
        let mut registers = Registers::default();

        assert_eq!(
            answer(&mut registers, Request::WriteSingleRegister(5, 0xBEEF)),
            Ok(Response::WriteSingleRegister(5, 0xBEEF))
        );
        assert_eq!(
            answer(
                &mut registers,
                Request::WriteMultipleRegisters(LAST - 1, Cow::Borrowed(&[8, 9]))
            ),
            Ok(Response::WriteMultipleRegisters(LAST - 1, 2))
        );
        assert_eq!(
            answer(&mut registers, Request::WriteSingleCoil(0, true)),
            Ok(Response::WriteSingleCoil(0, true))
        );
        assert_eq!(
            answer(
                &mut registers,
                Request::WriteMultipleCoils(2, Cow::Borrowed(&[true, false, true]))
            ),
            Ok(Response::WriteMultipleCoils(2, 3))
        );

        assert_eq!(registers.holding[4..7], [0, 0xBEEF, 0]);
        assert_eq!(registers.holding[LAST as usize - 1..], [8, 9]);
        assert_eq!(
            registers.coils[..6],
            [true, false, true, false, true, false]
        );
    }

    #[test]
    fn quantities_at_the_protocol_limits_are_served() {
        let mut registers = Registers::default();
        let cases = [
            Request::ReadCoils(0, 2000),
            Request::ReadDiscreteInputs(0, 2000),
            Request::ReadHoldingRegisters(0, 125),
            Request::ReadInputRegisters(0, 125),
            Request::WriteMultipleCoils(0, vec![true; 1968].into()),
            Request::WriteMultipleRegisters(0, vec![1; 123].into()),
        ];
        for request in cases {
            assert!(
                answer(&mut registers, request.clone()).is_ok(),
                "{request:?}"
            );
        }
    }

    #[test]
    fn zero_or_too_large_quantities_are_illegal_data_value() {
        let mut registers = Registers::default();
        let cases = [
            Request::ReadCoils(0, 0),
            Request::ReadCoils(0, 2001),
            Request::ReadDiscreteInputs(0, 0),
            Request::ReadDiscreteInputs(0, 2001),
            Request::ReadHoldingRegisters(0, 0),
            Request::ReadHoldingRegisters(0, 126),
            Request::ReadInputRegisters(0, 0),
            Request::ReadInputRegisters(0, 126),
            Request::WriteMultipleCoils(0, Cow::Borrowed(&[])),
            Request::WriteMultipleCoils(0, vec![true; 1969].into()),
            Request::WriteMultipleRegisters(0, Cow::Borrowed(&[])),
            Request::WriteMultipleRegisters(0, vec![1; 124].into()),
            // The quantity is checked before the address, as the specification orders it.
            Request::ReadHoldingRegisters(u16::MAX, 0),
        ];
        for request in cases {
            assert_eq!(
                answer(&mut registers, request.clone()),
                Err(ExceptionCode::IllegalDataValue),
                "{request:?}"
            );
        }
        assert_eq!(
            registers,
            Registers::default(),
            "a refused write changed nothing"
        );
    }

    #[test]
    fn entries_beyond_the_table_are_illegal_data_address() {
        let mut registers = Registers::default();
        let cases = [
            Request::ReadCoils(LAST, 2),
            Request::ReadDiscreteInputs(LAST + 1, 1),
            Request::ReadHoldingRegisters(LAST, 2),
            Request::ReadInputRegisters(u16::MAX, 125),
            Request::WriteSingleCoil(LAST + 1, true),
            Request::WriteSingleRegister(u16::MAX, 1),
            Request::WriteMultipleCoils(LAST, Cow::Borrowed(&[true, true])),
            Request::WriteMultipleRegisters(u16::MAX, vec![1; 123].into()),
        ];
        for request in cases {
            assert_eq!(
                answer(&mut registers, request.clone()),
                Err(ExceptionCode::IllegalDataAddress),
                "{request:?}"
            );
        }
        assert_eq!(
            registers,
            Registers::default(),
            "a refused write changed nothing"
        );
    }

    #[test]
    fn a_smaller_table_ends_where_its_length_does() {
        let mut registers = Registers {
            holding: vec![0; 4],
            max_read_registers: 125,
            ..Registers::default()
        };
        assert!(answer(&mut registers, Request::ReadHoldingRegisters(0, 4)).is_ok());
        assert_eq!(
            answer(&mut registers, Request::ReadHoldingRegisters(3, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn other_functions_are_illegal_function() {
        let mut registers = Registers::default();
        let cases = [
            Request::MaskWriteRegister(0, 0xFF00, 0x0012),
            Request::ReadWriteMultipleRegisters(0, 1, 1, Cow::Borrowed(&[1])),
            Request::ReportServerId,
            Request::Custom(0x41, Cow::Borrowed(&[1, 2, 3])),
        ];
        for request in cases {
            assert_eq!(
                answer(&mut registers, request.clone()),
                Err(ExceptionCode::IllegalFunction),
                "{request:?}"
            );
        }
    }
}
